package server

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// setSystemClock sets CLOCK_REALTIME; it needs CAP_SYS_TIME.
func setSystemClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("set realtime clock to %s: %w", t.Format(time.RFC3339), err)
	}
	return nil
}

// Metrics is the body of GET /metrics: the sandbox's resource use as its
// kernel sees it.
type Metrics struct {
	CPUCount   int     `json:"cpu_count"`
	CPUUsedPct float64 `json:"cpu_used_pct"`
	MemTotal   uint64  `json:"mem_total"` // bytes
	MemUsed    uint64  `json:"mem_used"`  // bytes, total minus available
	DiskTotal  uint64  `json:"disk_total"`
	DiskUsed   uint64  `json:"disk_used"`
}

// cpuSampleWindow is how long /metrics watches /proc/stat to compute usage.
const cpuSampleWindow = 100 * time.Millisecond

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	m, err := readMetrics(r, s.opts.DiskPath)
	if err != nil {
		s.log.Warn("read metrics", "error", err)
		writeError(w, http.StatusInternalServerError, "could not read the sandbox's metrics")
		return
	}
	writeJSON(w, m)
}

func readMetrics(r *http.Request, diskPath string) (Metrics, error) {
	m := Metrics{CPUCount: runtime.NumCPU()}
	idle0, total0, err := cpuTimes()
	if err != nil {
		return m, err
	}
	select {
	case <-time.After(cpuSampleWindow):
	case <-r.Context().Done():
		return m, r.Context().Err()
	}
	idle1, total1, err := cpuTimes()
	if err != nil {
		return m, err
	}
	if dt := total1 - total0; dt > 0 {
		m.CPUUsedPct = float64(dt-(idle1-idle0)) / float64(dt) * 100
	}
	if m.MemTotal, m.MemUsed, err = memory(); err != nil {
		return m, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(diskPath, &st); err != nil {
		return m, fmt.Errorf("statfs %q: %w", diskPath, err)
	}
	bs := uint64(st.Bsize)
	m.DiskTotal = st.Blocks * bs
	m.DiskUsed = (st.Blocks - st.Bfree) * bs
	return m, nil
}

// cpuTimes returns idle (idle+iowait) and total jiffies from /proc/stat.
func cpuTimes() (idle, total uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	fields := strings.Fields(string(line))
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, 0, errors.New("read /proc/stat: no aggregate cpu line")
	}
	for i, f := range fields[1:] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("read /proc/stat: field %d: %w", i+1, err)
		}
		// guest and guest_nice (fields 9, 10) are already in user and nice.
		if i >= 8 {
			break
		}
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return idle, total, nil
}

// memory returns MemTotal and MemTotal-MemAvailable from /proc/meminfo, in bytes.
func memory() (total, used uint64, err error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, 0, fmt.Errorf("read /proc/meminfo: %w", err)
	}
	defer f.Close()
	var avail uint64
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "MemTotal":
			total, haveTotal = kb*1024, true
		case "MemAvailable":
			avail, haveAvail = kb*1024, true
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("read /proc/meminfo: %w", err)
	}
	if !haveTotal || !haveAvail {
		return 0, 0, errors.New("read /proc/meminfo: MemTotal or MemAvailable missing")
	}
	return total, total - min(avail, total), nil
}
