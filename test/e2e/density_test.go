package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/id"
	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
)

// densityMemoryMB is each idle sandbox's memory limit: the API's minimum.
const densityMemoryMB = 128

// envdSample is how many sandboxes' envd memory the density benchmark
// reads (each read walks the host's /proc).
const envdSample = 50

// BenchmarkIdleDensity packs WRENN_BENCH_DENSITY=N idle runc sandboxes on
// this host and reports what they cost. It is skipped unless the variable
// is set, so make test and make bench stay fast; run it with -benchtime=1x.
//
// Sandboxes are created through the REST API (128 MiB, 256 MiB disk, a
// day's timeout so none auto-pauses) until N or until the control plane
// refuses for capacity; the scheduler counts memory limits as hard
// reservations by default (WRENN_MEMORY_OVERCOMMIT=1), so a host of M MiB
// takes at most M/128 through the API.
// The rest, if any, are created on the agent directly, which measures the
// host rather than the scheduler's bookkeeping; both counts are reported.
// Every sandbox then runs `true`, the host's memory is read from each
// sandbox's cgroup, and everything is destroyed and checked for leaks.
func BenchmarkIdleDensity(b *testing.B) {
	raw := testenv.Getenv("WRENN_BENCH_DENSITY")
	if raw == "" {
		b.Skip("set WRENN_BENCH_DENSITY=N (e.g. 500) to pack N idle sandboxes on this host; run with -benchtime=1x")
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 {
		b.Fatalf("WRENN_BENCH_DENSITY %q must be a positive integer", raw)
	}
	// 2 cores × 100 = 200 vCPUs at most through the API; a /20 has 1024
	// slots of /30 for links.
	s := startStack(b, withEnv(
		[]string{"WRENN_CPU_OVERCOMMIT=100"},
		[]string{"WRENN_SANDBOX_CIDR=10.112.0.0/20", "LOG_LEVEL=info"},
	))
	b.Cleanup(func() {
		if b.Failed() {
			b.Logf("host agent's warnings and errors:\n%s\nlast lines:\n%s", problems(s.agent.log, 60), s.agent.tail())
		}
	})
	before := snapshotResources(b, s.dir)
	agent := s.agentClient()
	ctx := context.Background()
	agentRSS0 := rssBytes(b, s.agent.cmd.Process.Pid)
	avail0 := memAvailable(b)

	var (
		mu         sync.Mutex
		viaAPI     []string
		viaAgent   []string
		apiStop    string // why the API stopped placing, if it did
		agentStop  string // why the agent stopped creating, if it did
		stopped    bool
		firstError error
	)
	destroyAll := func() {
		mu.Lock()
		api, direct := append([]string(nil), viaAPI...), append([]string(nil), viaAgent...)
		mu.Unlock()
		parallel(8, len(api), func(i int) error {
			code, err := s.do(http.MethodDelete, "/v1/sandboxes/"+api[i], nil, nil)
			if err != nil || code != http.StatusAccepted {
				return fmt.Errorf("delete %s: status %d: %w", api[i], code, err)
			}
			return nil
		})
		for _, id := range api {
			s.waitStatus(id, "stopped", 2*time.Minute)
		}
		parallel(8, len(direct), func(i int) error {
			_, err := agent.DestroySandbox(ctx, connect.NewRequest(&hostagentv1.DestroySandboxRequest{SandboxId: direct[i]}))
			return err
		})
	}

	start := time.Now()
	// Phase 1: the REST API, 4 requests at a time, until N or a refusal.
	errs := parallel(4, n, func(int) error {
		mu.Lock()
		if stopped {
			mu.Unlock()
			return nil
		}
		mu.Unlock()
		var answer json.RawMessage
		code, err := s.do(http.MethodPost, "/v1/sandboxes", map[string]any{
			"template": "minimal", "vcpus": 1, "memory_mb": densityMemoryMB, "disk_mb": 256, "timeout_sec": 86400,
		}, &answer)
		var sb sandbox
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if err == nil && code == http.StatusAccepted {
			err = json.Unmarshal(answer, &sb)
		} else if err == nil {
			_ = json.Unmarshal(answer, &e)
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			return fmt.Errorf("create sandbox %d through the API: %w", len(viaAPI)+1, err)
		}
		if code != http.StatusAccepted {
			if !stopped {
				stopped = true
				apiStop = fmt.Sprintf("after %d: status %d %s: %s", len(viaAPI), code, e.Error.Code, e.Error.Message)
			}
			return nil
		}
		viaAPI = append(viaAPI, sb.ID)
		return nil
	})
	if len(errs) > 0 {
		destroyAll()
		b.Fatalf("create through the API: %v", errors.Join(errs...))
	}
	for _, id := range viaAPI {
		var sb sandbox
		deadline := time.Now().Add(3 * time.Minute)
		for {
			s.mustDo(http.MethodGet, "/v1/sandboxes/"+id, nil, http.StatusOK, &sb)
			if sb.Status == "running" || sb.Status == "error" || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if sb.Status != "running" && firstError == nil {
			firstError = fmt.Errorf("sandbox %s is %s: %s", id, sb.Status, sb.Error)
		}
	}
	apiElapsed := time.Since(start)
	if firstError != nil {
		b.Errorf("not every API sandbox came up (%d asked): %v\nagent says:\n%s", len(viaAPI), firstError, s.agent.tail())
	}

	// Phase 2: the agent directly, for what the scheduler would not place.
	start2 := time.Now()
	if len(viaAPI) < n && firstError == nil {
		stopped = false
		errs = parallel(8, n-len(viaAPI), func(int) error {
			mu.Lock()
			if stopped {
				mu.Unlock()
				return nil
			}
			mu.Unlock()
			sid := id.New(id.Sandbox)
			_, err := agent.CreateSandbox(ctx, connect.NewRequest(&hostagentv1.CreateSandboxRequest{
				SandboxId: sid, Template: "minimal", Vcpus: 1, MemoryMb: densityMemoryMB, DiskMb: 256, TimeoutSec: 86400,
			}))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if !stopped {
					stopped = true
					agentStop = fmt.Sprintf("after %d on the agent (%d in all): %v", len(viaAgent), len(viaAPI)+len(viaAgent), err)
				}
				return nil
			}
			viaAgent = append(viaAgent, sid)
			return nil
		})
		if len(errs) > 0 {
			b.Errorf("create on the agent: %v", errors.Join(errs...))
		}
	}
	agentElapsed := time.Since(start2)
	all := append(append([]string(nil), viaAPI...), viaAgent...)
	b.Logf("created %d through the API in %s (API stopped: %q), %d on the agent directly in %s (agent stopped: %q)",
		len(viaAPI), apiElapsed.Round(time.Millisecond), apiStop, len(viaAgent), agentElapsed.Round(time.Millisecond), agentStop)

	// Every sandbox answers.
	var answered int
	var amu sync.Mutex
	execStart := time.Now()
	errs = parallel(8, len(all), func(i int) error {
		res, err := agent.Exec(ctx, connect.NewRequest(&hostagentv1.ExecRequest{SandboxId: all[i], Cmd: "true"}))
		if err != nil {
			return fmt.Errorf("exec true in %s: %w", all[i], err)
		}
		if res.Msg.GetExitCode() != 0 {
			return fmt.Errorf("true in %s exited %d", all[i], res.Msg.GetExitCode())
		}
		amu.Lock()
		answered++
		amu.Unlock()
		return nil
	})
	execElapsed := time.Since(execStart)
	for _, err := range errs {
		b.Error(err)
	}

	// Let boot-time allocations settle before reading memory, then see
	// what CPU the idle sandboxes burn over 10 s.
	// The agent's own CPU (its runtime commands included, as waited-for
	// children) is measured beside the sandboxes', and the sandboxes' is
	// split by process name, so it shows where idle CPU goes.
	time.Sleep(5 * time.Second)
	agentPid := s.agent.cmd.Process.Pid
	cpu0, agent0, procs0, host0, cpuWindow := sandboxesCPU(all), processCPU(agentPid), sandboxProcessCPU(), hostBusy(), time.Now()
	time.Sleep(15 * time.Second)
	window := float64(time.Since(cpuWindow))
	idleCPU := float64(sandboxesCPU(all)-cpu0) / window
	agentCPU := float64(processCPU(agentPid)-agent0) / window
	hostCPU := float64(hostBusy()-host0) / window
	var byName []string
	for name, ns := range sandboxProcessCPU() {
		if d := float64(ns-procs0[name]) / window; d > 0 {
			byName = append(byName, fmt.Sprintf("%s %.3f", name, d))
		}
	}
	sort.Strings(byName)
	var usage, rss uint64
	var procs int
	snap := snapshotResources(b, s.dir)
	procs = len(ours(snap.Processes, all...))
	for _, sid := range all {
		u, r, err := sandboxMemory(sid)
		if err != nil {
			b.Errorf("memory of %s: %v", sid, err)
			continue
		}
		usage += u
		rss += r
	}
	// envd's own share: its RSS counts the binary's pages whole in every
	// sandbox, its PSS splits them between the sandboxes that map them.
	var envdRSS, envdPSS, envdSampled int
	for _, sid := range all[:min(len(all), envdSample)] {
		r, p := sandboxProcMem(b, agentRecord(b, s, sid).Link.NetNSPath, "envd")
		envdRSS, envdPSS, envdSampled = envdRSS+r, envdPSS+p, envdSampled+1
	}
	agentRSS1 := rssBytes(b, s.agent.cmd.Process.Pid)
	avail1 := memAvailable(b)

	count := len(all)
	if count > 0 {
		per := func(v float64) float64 { return v / float64(count) }
		growth := float64(agentRSS1) - float64(agentRSS0)
		b.ReportMetric(float64(count), "sandboxes")
		b.ReportMetric(float64(len(viaAPI)), "via-api")
		b.ReportMetric(float64(answered), "answered")
		b.ReportMetric(float64(usage)/(1<<20), "cgroup-usage-MiB")
		b.ReportMetric(per(float64(usage))/(1<<20), "cgroup-usage-MiB/sb")
		b.ReportMetric(per(float64(rss))/(1<<20), "cgroup-rss-MiB/sb")
		b.ReportMetric(per(growth)/(1<<20), "agent-rss-growth-MiB/sb")
		b.ReportMetric((per(float64(usage))+per(growth))/(1<<20), "overhead-MiB/sb")
		b.ReportMetric(per(float64(avail0)-float64(avail1))/(1<<20), "host-memavail-drop-MiB/sb")
		b.ReportMetric(float64(procs)/float64(count), "procs/sb")
		if envdSampled > 0 {
			b.ReportMetric(float64(envdRSS)/float64(envdSampled)/1024, "envd-rss-MiB")
			b.ReportMetric(float64(envdPSS)/float64(envdSampled)/1024, "envd-pss-MiB")
		}
		b.ReportMetric(idleCPU, "idle-cores")
		b.ReportMetric(per(idleCPU*100), "idle-cpu-%/sb")
		b.ReportMetric(agentCPU, "agent-idle-cores")
		b.ReportMetric(per(agentCPU*100), "agent-idle-cpu-%/sb")
		b.ReportMetric(hostCPU, "host-busy-cores")
		if len(viaAPI) > 0 {
			b.ReportMetric(float64(len(viaAPI))/apiElapsed.Seconds(), "api-creates/s")
		}
		if len(viaAgent) > 0 {
			b.ReportMetric(float64(len(viaAgent))/agentElapsed.Seconds(), "agent-creates/s")
		}
		b.ReportMetric(float64(count)/execElapsed.Seconds(), "execs/s")
		b.ReportMetric(0, "ns/op")
		// Also in the log: metrics are not printed when the run fails.
		b.Logf("%d sandboxes (%d via the API), %d answered; cgroup usage %.1f MiB in all, %.2f MiB/sb (anon %.2f MiB/sb); agent RSS %+.2f MiB/sb; host MemAvailable drop %.2f MiB/sb; %.1f processes/sb; idle CPU %.3f cores in all",
			count, len(viaAPI), answered, float64(usage)/(1<<20), per(float64(usage))/(1<<20), per(float64(rss))/(1<<20),
			per(growth)/(1<<20), per(float64(avail0)-float64(avail1))/(1<<20), float64(procs)/float64(count), idleCPU)
		b.Logf("idle CPU over %.0f s, in cores: sandboxes %.3f (%.3f %%/sb; by process: %s), agent %.3f (%.4f %%/sb), whole host busy %.3f",
			window/1e9, idleCPU, per(idleCPU*100), strings.Join(byName, ", "), agentCPU, per(agentCPU*100), hostCPU)
	}
	if count < n {
		b.Logf("reached %d of %d: API: %s; agent: %s", count, n, apiStop, agentStop)
	}

	destroyAll()
	assertNoLeaks(b, before, settledResources(b, s.dir, all...), all...)
}

// parallel runs fn(0..n-1) on workers goroutines and returns its errors.
func parallel(workers, n int, fn func(i int) error) []error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		next = make(chan int)
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return errs
}

// sandboxMemory reads a sandbox's memory cgroup: usage (page cache
// included) and anonymous memory, on cgroup v1 or v2.
func sandboxMemory(sandboxID string) (usage, rss uint64, err error) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*/wrenn", sandboxID))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup/wrenn", sandboxID))
	for _, d := range dirs {
		if u, err := readUint(filepath.Join(d, "memory.usage_in_bytes")); err == nil {
			r, err := statField(filepath.Join(d, "memory.stat"), "total_rss")
			return u, r, err
		}
		if u, err := readUint(filepath.Join(d, "memory.current")); err == nil {
			r, err := statField(filepath.Join(d, "memory.stat"), "anon")
			return u, r, err
		}
	}
	return 0, 0, fmt.Errorf("no memory cgroup for %s under /sys/fs/cgroup", sandboxID)
}

// sandboxesCPU is the CPU time, in nanoseconds, the sandboxes' cgroups
// used so far (cpuacct on cgroup v1, cpu.stat on v2); a sandbox whose
// cgroup cannot be read counts nothing.
func sandboxesCPU(ids []string) uint64 {
	var sum uint64
	for _, sid := range ids {
		if v, err := readUint(filepath.Join("/sys/fs/cgroup/cpuacct/wrenn", sid, "cpuacct.usage")); err == nil {
			sum += v
		} else if v, err := readUint(filepath.Join("/sys/fs/cgroup/cpu,cpuacct/wrenn", sid, "cpuacct.usage")); err == nil {
			sum += v
		} else if v, err := statField(filepath.Join("/sys/fs/cgroup/wrenn", sid, "cpu.stat"), "usage_usec"); err == nil {
			sum += v * 1000
		}
	}
	return sum
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// statField reads "key value" from a memory.stat-like file.
func statField(path, key string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " "); ok && k == key {
			return strconv.ParseUint(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("%s has no %s", path, key)
}

// rssBytes is a process's resident set size.
func rssBytes(t testing.TB, pid int) uint64 {
	t.Helper()
	v, err := kBField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
	if err != nil {
		t.Fatalf("read RSS of %d: %v", pid, err)
	}
	return v
}

// memAvailable is the host's MemAvailable.
func memAvailable(t testing.TB) uint64 {
	t.Helper()
	v, err := kBField("/proc/meminfo", "MemAvailable:")
	if err != nil {
		t.Fatalf("read MemAvailable: %v", err)
	}
	return v
}

func kBField(path, key string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == key {
			v, err := strconv.ParseUint(f[1], 10, 64)
			return v << 10, err
		}
	}
	return 0, fmt.Errorf("%s has no %s", path, key)
}

// clockTick is the kernel's USER_HZ, the unit of /proc CPU times (100 on
// every Linux this runs on).
const clockTick = 10 * time.Millisecond

// processCPU is the CPU time, in nanoseconds, pid and its waited-for
// children used so far (utime, stime, cutime, cstime of /proc/pid/stat).
func processCPU(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which may hold spaces, in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	var sum uint64
	for _, i := range []int{11, 12, 13, 14} { // fields 14-17, counted from 3
		v, _ := strconv.ParseUint(f[i], 10, 64)
		sum += v
	}
	return sum * uint64(clockTick)
}

// sandboxProcessCPU sums the CPU time (utime+stime, nanoseconds) of every
// process in a sandbox cgroup by process name.
func sandboxProcessCPU() map[string]uint64 {
	out := map[string]uint64{}
	paths, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, p := range paths {
		cg, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(cg), "/wrenn/sb-") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		if err != nil {
			continue
		}
		st := string(b)
		open, end := strings.IndexByte(st, '('), strings.LastIndexByte(st, ')')
		if open < 0 || end < open {
			continue
		}
		f := strings.Fields(st[end+2:])
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		stime, _ := strconv.ParseUint(f[12], 10, 64)
		out[st[open+1:end]] += (ut + stime) * uint64(clockTick)
	}
	return out
}

// hostBusy is the CPU time, in nanoseconds, all cores spent not idle.
func hostBusy() uint64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)[1:]
	var busy uint64
	for i, x := range f {
		v, _ := strconv.ParseUint(x, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy * uint64(clockTick)
}

// problems returns up to max warning and error lines of a log file.
func problems(path string, max int) string {
	b, _ := os.ReadFile(path)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			if out = append(out, line); len(out) == max {
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
