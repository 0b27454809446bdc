package e2bsdk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
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
func BenchmarkE2BSDK(b *testing.B) {
	node, nodeErr := exec.LookPath("node")
	npm, npmErr := exec.LookPath("npm")
	need(b, "node is not installed (apt-get install nodejs npm)", nodeErr == nil)
	need(b, "npm is not installed (apt-get install npm)", npmErr == nil)
	_, url := benchEnvd(b)
	ctx, cancel := context.WithTimeout(b.Context(), testTimeout)
	defer cancel()
	dir := installSDK(ctx, b, npm, filepath.Join(b.TempDir(), "js"))
	if err := copyFile("bench.mjs", filepath.Join(dir, "bench.mjs")); err != nil {
		b.Fatal(err)
	}
	scratch := b.TempDir()
	userName := addUser(b)
	var last map[string]float64
	for b.Loop() {
		cmd := exec.CommandContext(ctx, node, filepath.Join(dir, "bench.mjs"))
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "E2B_DEBUG=true", "E2B_SANDBOX_URL="+url, "WRENN_E2BSDK_DIR="+scratch, "WRENN_E2BSDK_USER="+userName)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("bench.mjs: %v\n%s%s", err, out, stderr.Bytes())
		}
		last = nil
		if err := json.Unmarshal(bytes.TrimSpace(out), &last); err != nil {
			b.Fatalf("bench.mjs printed %q: %v", out, err)
		}
	}
	b.ReportMetric(last["execP50Ms"], "exec-p50-ms")
	b.ReportMetric(last["execP95Ms"], "exec-p95-ms")
	b.ReportMetric(last["uploadMiBps"], "upload-MiB/s")
	b.ReportMetric(last["downloadMiBps"], "download-MiB/s")
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
