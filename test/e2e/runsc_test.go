package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/runtime"
	"github.com/wrenn/wrenn/internal/runtime/oci"
	"github.com/wrenn/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn/wrenn/internal/testenv"
	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
)

// TestSandboxLifecycleRunsc runs a sandbox under gVisor through the whole
// stack: an agent with WRENN_RUNTIME=runsc, create through the REST API,
// envd answering inside gVisor under wrenn-init and the OOM guard, exec, pause and
// resume through REST with a background counter, destroy, and nothing left
// on the host.
func TestSandboxLifecycleRunsc(t *testing.T) {
	s := startStack(t, withRuntime(oci.RunscName))
	before := snapshotResources(t, s.dir)

	var created sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 256}, http.StatusAccepted, &created)
	s.waitStatus(created.ID, "running", 90*time.Second)

	// The leak check must be able to see what a gVisor sandbox holds: its
	// Sentry and gofer sit in the sandbox's cgroups like runc's processes.
	during := snapshotResources(t, s.dir)
	for what, found := range map[string][]string{
		"network namespace": ours(during.Netns, created.ID), "cgroup": ours(during.Cgroups, created.ID),
		"process": ours(during.Processes, created.ID), "mount": during.Mounts,
	} {
		if len(found) == 0 {
			t.Errorf("a running gVisor sandbox shows no %s: the leak check could not catch one", what)
		}
	}

	var host syscall.Utsname
	if err := syscall.Uname(&host); err != nil {
		t.Fatal(err)
	}
	hostRelease := utsString(host.Release[:])

	t.Run("exec", func(t *testing.T) {
		if res := s.exec(created.ID, "echo hi"); res.Stdout != "hi\n" || res.ExitCode != 0 {
			t.Errorf("echo hi = %+v", res)
		}
		// PID 1 is the OOM guard gVisor needs, with wrenn-init its child.
		if res := s.exec(created.ID, "cat /proc/1/cmdline | tr '\\0' ' '"); !strings.HasPrefix(res.Stdout, "/dev/.wrenn-oomguard -limit ") ||
			!strings.HasSuffix(res.Stdout, " -- /usr/local/bin/wrenn-init ") {
			t.Errorf("PID 1 is %q, want the OOM guard running wrenn-init", res.Stdout)
		}
	})

	// gVisor's root overlay has no user extended attributes, so an upload
	// with metadata is refused with the reason, and leaves no file.
	t.Run("file metadata refused clearly", func(t *testing.T) {
		const p = "/home/wrenn-user/meta.txt"
		if code, body := metadataUpload(t, s, created.ID, p); code != http.StatusBadRequest || !strings.Contains(body, "extended attributes") {
			t.Fatalf("upload with metadata = %d %s, want 400 naming extended attributes", code, body)
		}
		if e := envdStat(t, s, created.ID, p); e != nil {
			t.Fatalf("refused upload left %v", e)
		}
	})

	t.Run("the kernel is gVisor's", func(t *testing.T) {
		// gVisor's Sentry implements the Linux ABI itself and reports its
		// own kernel, 4.4.0, whatever the host runs; its boot log (dmesg
		// reads the Sentry's, not the host's) names gVisor.
		res := s.exec(created.ID, "uname -a")
		if res.ExitCode != 0 || !strings.HasPrefix(res.Stdout, "Linux ") || !strings.Contains(res.Stdout, " 4.4.0 ") {
			t.Errorf("uname -a = %+v, want gVisor's Linux 4.4.0", res)
		}
		if strings.Contains(res.Stdout, " "+hostRelease+" ") {
			t.Errorf("uname -a = %q reports the host's kernel %s", res.Stdout, hostRelease)
		}
		if res := s.exec(created.ID, "cat /proc/version"); !strings.HasPrefix(res.Stdout, "Linux version 4.4.0 ") {
			t.Errorf("/proc/version = %+v, want Linux version 4.4.0", res)
		}
		if res := s.exec(created.ID, "dmesg"); res.ExitCode != 0 || !strings.Contains(res.Stdout, "gVisor") {
			t.Errorf("dmesg = %+v, want gVisor's boot messages", res)
		}
	})

	t.Run("pause and resume keep memory and files", func(t *testing.T) {
		if res := s.exec(created.ID, "echo kept > /root/f && nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/n; sleep 0.05; done' >/dev/null 2>&1 &"); res.ExitCode != 0 {
			t.Fatalf("start counter: %+v", res)
		}
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+created.ID+"/pause", nil, http.StatusAccepted, nil)
		s.waitStatus(created.ID, "paused", 30*time.Second)
		var e struct {
			Error struct{ Code string } `json:"error"`
		}
		code, err := s.do(http.MethodPost, "/v1/sandboxes/"+created.ID+"/exec", map[string]any{"cmd": "true"}, &e)
		if err != nil || code != http.StatusConflict || e.Error.Code != "conflict" {
			t.Errorf("exec on a paused sandbox: status %d %+v %v, want 409 conflict", code, e, err)
		}
		time.Sleep(300 * time.Millisecond)
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+created.ID+"/resume", nil, http.StatusAccepted, nil)
		s.waitStatus(created.ID, "running", 30*time.Second)
		res := s.exec(created.ID, "cat /root/f; a=$(cat /root/n); sleep 0.3; b=$(cat /root/n); [ \"$b\" -gt \"$a\" ] && echo counting")
		if res.Stdout != "kept\ncounting\n" {
			t.Errorf("after resume: %+v, want the file and a counter that still runs", res)
		}
	})

	s.mustDo(http.MethodDelete, "/v1/sandboxes/"+created.ID, nil, http.StatusAccepted, nil)
	s.waitStatus(created.ID, "stopped", 60*time.Second)
	assertNoLeaks(t, before, settledResources(t, s.dir, created.ID), created.ID)
}

func utsString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// BenchmarkCreateToRunningRunsc is BenchmarkCreateToRunning on a gVisor
// agent: POST /v1/sandboxes until the sandbox reads running, p50 and p95.
func BenchmarkCreateToRunningRunsc(b *testing.B) {
	s := startStack(b, withRuntime(oci.RunscName))
	// A failed create's reason is in the control plane's warning, not in
	// the status the benchmark sees.
	b.Cleanup(func() {
		if b.Failed() {
			all, _ := os.ReadFile(filepath.Join(s.dir, "control-plane.stderr"))
			for _, l := range strings.Split(string(all), "\n") {
				if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
					b.Log(l)
				}
			}
		}
	})
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		var sb sandbox
		s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal"}, http.StatusAccepted, &sb)
		s.waitStatus(sb.ID, "running", time.Minute)
		lat = append(lat, time.Since(start))
		b.StopTimer()
		s.mustDo(http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil, http.StatusAccepted, nil)
		s.waitStatus(sb.ID, "stopped", time.Minute)
		b.StartTimer()
	}
	reportPercentiles(b, lat)
}

// BenchmarkPauseResumeRunsc measures the agent's PauseSandbox and
// ResumeSandbox RPCs on a gVisor sandbox (runsc pause/resume, plus envd's
// /init after resume), p50 and p95 of each, to set beside
// BenchmarkRawRunscPauseResume.
func BenchmarkPauseResumeRunsc(b *testing.B) {
	s := startStack(b, withRuntime(oci.RunscName))
	id := s.createRunning()
	agent := s.agentClient()
	ctx := context.Background()
	var pause, resume []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := agent.PauseSandbox(ctx, connect.NewRequest(&hostagentv1.PauseSandboxRequest{SandboxId: id})); err != nil {
			b.Fatalf("pause: %v", err)
		}
		mid := time.Now()
		if _, err := agent.ResumeSandbox(ctx, connect.NewRequest(&hostagentv1.ResumeSandboxRequest{SandboxId: id})); err != nil {
			b.Fatalf("resume: %v", err)
		}
		pause, resume = append(pause, mid.Sub(start)), append(resume, time.Since(mid))
	}
	b.StopTimer()
	reportPair(b, "pause", pause)
	reportPair(b, "resume", resume)
	if res := s.exec(id, "echo ok"); res.Stdout != "ok\n" {
		b.Errorf("sandbox after %d pause/resume cycles: %+v", b.N, res)
	}
	s.mustDo(http.MethodDelete, "/v1/sandboxes/"+id, nil, http.StatusAccepted, nil)
	s.waitStatus(id, "stopped", time.Minute)
}

// BenchmarkRawRunscPauseResume is the raw tool on the same machine: `runsc
// pause` and `runsc resume` of a busybox sandbox, each run as its own
// command the way the driver runs it (under the /proc/sys/net workaround,
// "wrapped") and bare, so the agent's numbers can be held to 1.5× of it.
func BenchmarkRawRunscPauseResume(b *testing.B) {
	if os.Geteuid() != 0 || oci.Available(oci.RunscName) != nil {
		msg := "raw runsc benchmark needs root and runsc (apt-get install runsc)"
		if testenv.InCI() {
			b.Fatal(msg)
		}
		b.Skip(msg)
	}
	root := filepath.Join(b.TempDir(), "runsc")
	cfg := oci.Runsc(root, nil)
	cfg.CgroupParent = "/wrenn-bench-runsc"
	d, err := oci.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = d.Cgroups().Remove(cfg.CgroupParent) })
	id := "sb-bench-raw-runsc"
	ctx := context.Background()
	spec := runtime.Spec{ID: id, StateDir: b.TempDir(), RootFS: runtimetest.BusyboxRootFS(b), NetNSPath: runtimetest.NetNS(b),
		Args: []string{"/bin/sleep", "100000"}, VCPUs: 1, MemoryMB: 64, Pids: 64}
	if err := d.Create(ctx, spec); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := d.Destroy(context.Background(), id); err != nil {
			b.Errorf("destroy: %v", err)
		}
	})
	bare := []string{oci.RunscName, "--root", root, "--platform=ptrace"}
	wrapped := append(slices.Clone(oci.RunscHideNetSysctls), bare...)
	run := func(argv []string, verb string) time.Duration {
		start := time.Now()
		if out, err := exec.Command(argv[0], append(argv[1:], verb, id)...).CombinedOutput(); err != nil {
			b.Fatalf("%s %s: %v: %s", strings.Join(argv, " "), verb, err, out)
		}
		return time.Since(start)
	}
	var wp, wr, bp, br []time.Duration
	b.ResetTimer()
	for range b.N {
		wp = append(wp, run(wrapped, "pause"))
		wr = append(wr, run(wrapped, "resume"))
		bp = append(bp, run(bare, "pause"))
		br = append(br, run(bare, "resume"))
	}
	b.StopTimer()
	reportPair(b, "pause", wp)
	reportPair(b, "resume", wr)
	reportPair(b, "bare-pause", bp)
	reportPair(b, "bare-resume", br)
}

// reportPair reports the p50 and p95 of lat as <name>-p50-ms and -p95-ms.
func reportPair(b *testing.B, name string, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	at := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(at(0.50), fmt.Sprintf("%s-p50-ms", name))
	b.ReportMetric(at(0.95), fmt.Sprintf("%s-p95-ms", name))
	b.ReportMetric(0, "ns/op")
}
