package e2bsdk

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/localsvc"
	pb "github.com/wrenn/wrenn/proto/envd/process"
	"github.com/wrenn/wrenn/proto/envd/process/processconnect"
	"github.com/wrenn/wrenn/test/e2bsdk/sdkbench"
)

// benchEnvd builds and starts a standalone envd for a benchmark.
func benchEnvd(b *testing.B) (pid int, url string) {
	b.Helper()
	need(b, "needs root: envd runs the benchmark's commands as root", os.Geteuid() == 0)
	ctx := b.Context()
	bin := buildEnvd(ctx, b, b.TempDir())
	port, err := localsvc.FreePort()
	if err != nil {
		b.Fatalf("pick a port for envd: %v", err)
	}
	pid, _ = startEnvd(ctx, b, bin, port)
	return pid, "http://127.0.0.1:" + strconv.Itoa(port)
}

// BenchmarkEnvdRSS reports envd's resident memory when idle and with 100
// live `sleep 600` processes, each started and then left by its client as
// SDK background commands are. Every iteration kills them all and waits
// until envd no longer tracks them.
func BenchmarkEnvdRSS(b *testing.B) {
	pid, url := benchEnvd(b)
	c := processconnect.NewProcessClient(http.DefaultClient, url)
	ctx := b.Context()
	time.Sleep(time.Second) // idle: past start-up
	idle := vmRSS(b, pid)
	var busy int
	for b.Loop() {
		pids := make([]uint32, 0, 100)
		for range 100 {
			s, err := c.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"600"}}}))
			if err != nil {
				b.Fatalf("start sleep: %v", err)
			}
			if !s.Receive() || s.Msg().GetEvent().GetStart() == nil {
				b.Fatalf("no start event: %v", s.Err())
			}
			pids = append(pids, s.Msg().GetEvent().GetStart().GetPid())
			s.Close()
		}
		time.Sleep(200 * time.Millisecond)
		busy = max(busy, vmRSS(b, pid))
		for _, p := range pids {
			_, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{
				Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: p}},
				Signal:  pb.Signal_SIGNAL_SIGKILL,
			}))
			if err != nil {
				b.Fatalf("kill %d: %v", p, err)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			l, err := c.List(ctx, connect.NewRequest(&pb.ListRequest{}))
			if err != nil {
				b.Fatalf("list: %v", err)
			}
			if len(l.Msg.GetProcesses()) == 0 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d processes still tracked 10 s after SIGKILL", len(l.Msg.GetProcesses()))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	b.ReportMetric(float64(idle)/1024, "idle-RSS-MiB")
	b.ReportMetric(float64(busy)/1024, "100procs-RSS-MiB")
}

// vmRSS reads VmRSS of pid in KiB.
func vmRSS(b *testing.B, pid int) int {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatalf("read envd's status: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				b.Fatalf("parse VmRSS %q: %v", v, err)
			}
			return kb
		}
	}
	b.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// BenchmarkE2BSDK runs bench.mjs: what an e2b SDK user measures against
// envd (exec round trip of `true`, 64 MiB write and read), as a fresh user
// whose login shell reads only the skeleton profile. Node's own time and
// `bash -l` start-up are in these numbers, as they are for every SDK user.
//
// With WRENN_E2B_ENVD set to a binary of E2B's envd, the same run also
// starts that envd standalone (-isnotfc, as E2B runs it outside Firecracker)
// and drives it with the same script, user and SDK; each iteration measures
// both, alternating which goes first, and the report gives both sides, their
// idle RSS and Wrenn/E2B ratios (medians over iterations). Without it, only
// Wrenn's envd is measured and the log says so. test/e2e's
// BenchmarkE2BSDKInSandbox measures both inside a runc sandbox instead.
func BenchmarkE2BSDK(b *testing.B) {
	node, nodeErr := exec.LookPath("node")
	npm, npmErr := exec.LookPath("npm")
	need(b, "node is not installed (apt-get install nodejs npm)", nodeErr == nil)
	need(b, "npm is not installed (apt-get install npm)", npmErr == nil)
	e2bBin := os.Getenv(sdkbench.E2BEnvdVar)
	if e2bBin != "" {
		e2bBin = checkE2BEnvd(b, e2bBin)
	}
	pid, url := benchEnvd(b)
	targets := []*sdkbench.Target{{Name: "wrenn", URL: url}}
	pids := []int{pid}
	ctx, cancel := context.WithTimeout(b.Context(), testTimeout)
	defer cancel()
	if e2bBin != "" {
		port, err := localsvc.FreePort()
		if err != nil {
			b.Fatalf("pick a port for E2B's envd: %v", err)
		}
		pid, _ := startDaemon(ctx, b, "E2B envd", port, e2bBin, "-isnotfc", "-port", strconv.Itoa(port))
		targets = append(targets, &sdkbench.Target{Name: "e2b", URL: "http://127.0.0.1:" + strconv.Itoa(port)})
		pids = append(pids, pid)
	} else {
		b.Logf("%s is not set: measuring Wrenn's envd only (set it to a built E2B envd to compare; see docs/architecture.md)", sdkbench.E2BEnvdVar)
	}
	dir := installSDK(ctx, b, npm, filepath.Join(b.TempDir(), "js"))
	if err := copyFile("bench.mjs", filepath.Join(dir, "bench.mjs")); err != nil {
		b.Fatal(err)
	}
	scratch := b.TempDir()
	userName := addUser(b)
	time.Sleep(time.Second) // idle: past start-up
	for i, t := range targets {
		t.IdleKiB = vmRSS(b, pids[i])
	}
	ceiling := sdkbench.GzipCeiling(b)
	b.Logf("load average before: %s", sdkbench.LoadAvg())
	i := 0
	for b.Loop() {
		for j := range targets {
			t := targets[(i+j)%len(targets)]
			t.Runs = append(t.Runs, sdkbench.RunScript(ctx, b, node, dir, t.URL, "WRENN_E2BSDK_DIR="+scratch, "WRENN_E2BSDK_USER="+userName, ceiling))
		}
		i++
	}
	b.Logf("load average after: %s", sdkbench.LoadAvg())
	var e2b *sdkbench.Target
	if len(targets) > 1 {
		e2b = targets[1]
	}
	sdkbench.Report(b, targets[0], e2b, sdkbench.Metrics, "standalone on the host, same SDK, user and script")
}

// checkE2BEnvd makes sure path is an executable file that answers
// -version, as E2B's envd does, and logs the version it names.
func checkE2BEnvd(b *testing.B, path string) string {
	b.Helper()
	abs, err := filepath.Abs(path)
	if err != nil {
		b.Fatalf("%s=%q: %v", sdkbench.E2BEnvdVar, path, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		b.Fatalf("%s=%q: %v (build E2B's envd as docs/architecture.md says, then point %s at the binary)", sdkbench.E2BEnvdVar, path, err, sdkbench.E2BEnvdVar)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		b.Fatalf("%s=%q is not an executable file", sdkbench.E2BEnvdVar, path)
	}
	out, err := exec.Command(abs, "-version").Output()
	if err != nil {
		b.Fatalf("%s=%q: `-version` failed (%v); is it E2B's envd?", sdkbench.E2BEnvdVar, path, err)
	}
	b.Logf("comparing with E2B's envd %s (%s)", strings.TrimSpace(string(out)), abs)
	return abs
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("read %s: %w", from, err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", to, err)
	}
	return nil
}
