package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// guard is the victim selection: what counts as over the limit and which
// process goes.
type guard struct {
	proc    string       // procfs mount point
	limit   int64        // bytes the sandbox's processes may use together
	protect map[int]bool // never killed: oomguard itself and the init
	log     *slog.Logger
}

// victim is a process chosen to be killed.
type victim struct {
	pid  int
	comm string
	rss  int64 // bytes
}

// errNoVictim means every process is protected or holds no memory.
var errNoVictim = errors.New("no process eligible")

// memUsed is MemTotal minus MemFree from a /proc/meminfo: what gVisor's
// memory accounting charges to the sandbox's processes.
func memUsed(meminfo []byte) (int64, error) {
	var total, free int64 = -1, -1
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "MemTotal" && name != "MemFree") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("meminfo line %q: want a number of kB", sc.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 {
			return 0, fmt.Errorf("meminfo line %q: want a number of kB", sc.Text())
		}
		if name == "MemTotal" {
			total = kb << 10
		} else {
			free = kb << 10
		}
	}
	if total < 0 || free < 0 {
		return 0, errors.New("meminfo has no MemTotal or MemFree")
	}
	return max(total-free, 0), nil
}

// pick returns the process the Linux OOM killer would choose: the largest
// resident set, adjusted by oom_score_adj in thousandths of the limit (envd
// starts what it runs at +100), never a protected one nor one at -1000.
// Processes that vanish while being read are skipped.
func (g *guard) pick() (victim, error) {
	entries, err := os.ReadDir(g.proc)
	if err != nil {
		return victim{}, err
	}
	pageSize := int64(os.Getpagesize())
	var best victim
	var bestScore int64
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || g.protect[pid] {
			continue
		}
		dir := filepath.Join(g.proc, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "oom_score_adj"))
		if err != nil {
			continue
		}
		adj, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || adj <= -1000 {
			continue
		}
		statm, err := os.ReadFile(filepath.Join(dir, "statm"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(statm))
		if len(f) < 2 {
			continue
		}
		pages, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || pages <= 0 {
			continue
		}
		rss := pages * pageSize
		score := rss + adj*g.limit/1000
		if best.pid != 0 && score <= bestScore {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
		best, bestScore = victim{pid: pid, comm: strings.TrimSpace(string(comm)), rss: rss}, score
	}
	if best.pid == 0 {
		return victim{}, errNoVictim
	}
	return best, nil
}

// statState is the state letter of a /proc/<pid>/stat line: the first
// field after the command, which is in parentheses and may hold anything.
func statState(stat []byte) (byte, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return 0, fmt.Errorf("stat %q has no state", stat)
	}
	return stat[i+2], nil
}

// alive reports whether pid still holds memory: it exists and is not a
// zombie (whose memory is already freed).
func alive(proc string, pid int) bool {
	b, err := os.ReadFile(proc + "/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	state, err := statState(b)
	return err == nil && state != 'Z' && state != 'X'
}
