package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/envdclient"
	"github.com/wrenn/wrenn/internal/testenv"
	envdprocess "github.com/wrenn/wrenn/proto/envd/process"
	"github.com/wrenn/wrenn/proto/envd/process/processconnect"
	"github.com/wrenn/wrenn/test/e2bsdk/sdkbench"
)

// e2bEnvdPort is where E2B's envd listens inside the benchmark's sandbox,
// next to Wrenn's on envdclient.Port; e2bEnvdExe is its file name there.
const (
	e2bEnvdPort = 49990
	e2bEnvdExe  = "e2b-envd"
)

// sdkBenchUser is the minimal image's login user that bench.mjs runs its
// commands and owns its files as.
const sdkBenchUser = "wrenn-user"

// sdkBenchMetrics are the figures bench.mjs prints, then the ones this
// benchmark measures itself with a Go client, in report order.
var sdkBenchMetrics = append(slices.Clone(sdkbench.Metrics), []sdkbench.Metric{
	{Key: "goExecP50Ms", Unit: "go-exec-p50-ms"},
	{Key: "goTrueP50Ms", Unit: "go-true-p50-ms"},
	{Key: "shellFloorMs", Unit: "bash-login-floor-ms"},
	{Key: "rawUploadMiBps", Unit: "raw-upload-MiB/s"},
	{Key: "rawDownloadMiBps", Unit: "raw-download-MiB/s"},
}...)

// BenchmarkE2BSDKInSandbox measures envd where users meet it: in a runc
// sandbox of the minimal image made through the REST API, driven from the
// host by the unmodified e2b SDK (test/e2bsdk/bench.mjs: exec round trip
// of `true` as the image's login user, 64 MiB files.write and files.read)
// and by a plain Go client, which tells the SDK's cost from envd's: the
// exec round trip of what the SDK runs (`/bin/bash -l -c true`, Connect
// JSON over HTTP/1.1 as the SDK speaks it) and of a bare /bin/true, and
// the same 64 MiB up and down as raw /files bodies. Both clients send the
// sandbox's access token, as the SDK does for a real sandbox. Two floors
// that no envd can beat are measured beside them: one login shell timed
// inside the sandbox (shellFloor), and the fastest gzip download the SDK's
// fetch takes (bench.mjs).
//
// With WRENN_E2B_ENVD naming a binary of E2B's envd, the benchmark uploads
// it into the same sandbox through Wrenn's envd, starts it there as root
// (-isnotfc -port 49990), initialises it with the same access token, and
// each iteration measures both, alternating which goes first. Both serve
// from the same rootfs, cgroup and network path, so the ratios compare the
// daemons. Idle RSS is read from the host (/proc of the sandbox's
// processes) a second after each started and was initialised, before it
// served anything else. Without the variable only Wrenn's envd is measured
// and the log says so.
func BenchmarkE2BSDKInSandbox(b *testing.B) {
	node, nodeErr := exec.LookPath("node")
	npm, npmErr := exec.LookPath("npm")
	if nodeErr != nil || npmErr != nil {
		msg := "the e2b SDK benchmark needs node and npm (apt-get install nodejs npm)"
		if testenv.InCI() {
			b.Fatal(msg)
		}
		b.Skip(msg)
	}
	e2bBin := os.Getenv(sdkbench.E2BEnvdVar)
	s := startStack(b)
	ctx, cancel := context.WithTimeout(b.Context(), 30*time.Minute)
	defer cancel()

	var sb sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 2, "memory_mb": 1024}, http.StatusAccepted, &sb)
	s.waitStatus(sb.ID, "running", time.Minute)
	b.Cleanup(func() {
		s.mustDo(http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil, http.StatusAccepted, nil)
		s.waitStatus(sb.ID, "stopped", time.Minute)
	})
	rec := agentRecord(b, s, sb.ID)
	tr := envdclient.NewTransport()
	b.Cleanup(tr.CloseIdleConnections)
	wc := envdclient.New(tr, rec.Link.GuestIP, rec.Token)
	targets := []*sdkbench.Target{{Name: "wrenn", URL: "http://" + net.JoinHostPort(rec.Link.GuestIP.String(), strconv.Itoa(envdclient.Port))}}
	// Each envd's idle RSS is read a second after its start and /init,
	// before it served anything else: Wrenn's before it uploads and starts
	// E2B's.
	time.Sleep(time.Second)
	targets[0].IdleKiB, _ = sandboxProcMem(b, rec.Link.NetNSPath, "envd")
	if e2bBin != "" {
		targets = append(targets, startE2BEnvdIn(ctx, b, wc, e2bBin, rec.Link.GuestIP, rec.Token))
		time.Sleep(time.Second)
		targets[1].IdleKiB, _ = sandboxProcMem(b, rec.Link.NetNSPath, e2bEnvdExe)
	} else {
		b.Logf("%s is not set: measuring Wrenn's envd only (set it to a built E2B envd to compare; see docs/architecture.md)", sdkbench.E2BEnvdVar)
	}

	dir := b.TempDir()
	for _, name := range []string{"package.json", "package-lock.json", "bench.mjs"} {
		data, err := os.ReadFile(filepath.Join(repoRoot(), "test", "e2bsdk", name))
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	npmCI := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
	npmCI.Dir = dir
	if out, err := npmCI.CombinedOutput(); err != nil {
		b.Fatalf("npm ci (installs the pinned e2b package): %v\n%s", err, out)
	}

	ceiling := sdkbench.GzipCeiling(b)
	b.Logf("load average before: %s", sdkbench.LoadAvg())
	b.ResetTimer()
	i := 0
	for b.Loop() {
		for j := range targets {
			t := targets[(i+j)%len(targets)]
			res := sdkbench.RunScript(ctx, b, node, dir, t.URL, "WRENN_E2BSDK_TOKEN="+rec.Token, "WRENN_E2BSDK_USER="+sdkBenchUser, ceiling)
			res["goExecP50Ms"] = goExecP50(ctx, b, tr, t.URL, rec.Token, "/bin/bash", "-l", "-c", "true")
			res["goTrueP50Ms"] = goExecP50(ctx, b, tr, t.URL, rec.Token, "/bin/true")
			res["shellFloorMs"] = shellFloor(ctx, b, wc)
			res["rawUploadMiBps"], res["rawDownloadMiBps"] = rawFilesThroughput(ctx, b, tr, t.URL, rec.Token)
			t.Runs = append(t.Runs, res)
		}
		i++
	}
	b.StopTimer()
	b.Logf("load average after: %s", sdkbench.LoadAvg())
	var e2b *sdkbench.Target
	if len(targets) > 1 {
		e2b = targets[1]
	}
	sdkbench.Report(b, targets[0], e2b, sdkBenchMetrics, "one runc sandbox, same SDK, user and script")
}

// agentSandboxRecord is the part of the agent's record of a sandbox
// (WRENN_DIR/sandboxes/<id>/sandbox.json) the benchmark needs to reach its
// envd directly, as the agent does.
type agentSandboxRecord struct {
	Token string `json:"token"`
	Link  struct {
		GuestIP   net.IP `json:"guest_ip"`
		NetNSPath string `json:"netns_path"`
	} `json:"link"`
}

func agentRecord(b testing.TB, s *stack, sandboxID string) agentSandboxRecord {
	b.Helper()
	path := filepath.Join(s.dir, "sandboxes", sandboxID, "sandbox.json")
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatalf("read the agent's record of %s: %v", sandboxID, err)
	}
	var rec agentSandboxRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		b.Fatalf("decode %s: %v", path, err)
	}
	if rec.Token == "" || rec.Link.GuestIP == nil || rec.Link.NetNSPath == "" {
		b.Fatalf("%s has no token, guest IP or netns: %s", path, data)
	}
	return rec
}

// startE2BEnvdIn copies E2B's envd at bin into the sandbox through Wrenn's
// envd, starts it as root on e2bEnvdPort, initialises it with token and
// waits for its /health.
func startE2BEnvdIn(ctx context.Context, b *testing.B, wc *envdclient.Client, bin string, ip net.IP, token string) *sdkbench.Target {
	b.Helper()
	f, err := os.Open(bin)
	if err != nil {
		b.Fatalf("%s=%q: %v (build E2B's envd as docs/architecture.md says)", sdkbench.E2BEnvdVar, bin, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		b.Fatalf("%s=%q is not a regular file", sdkbench.E2BEnvdVar, bin)
	}
	const inside = "/usr/local/bin/" + e2bEnvdExe
	if err := wc.WriteFile(ctx, "root", inside, f, st.Size()); err != nil {
		b.Fatalf("upload E2B's envd into the sandbox: %v", err)
	}
	res, err := wc.Exec(ctx, envdclient.ExecRequest{Cmd: "/bin/chmod", Args: []string{"755", inside}, User: "root", Timeout: time.Minute})
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("chmod E2B's envd: %v %+v", err, res)
	}
	ver, err := wc.Exec(ctx, envdclient.ExecRequest{Cmd: inside, Args: []string{"-version"}, User: "root", Timeout: time.Minute})
	if err != nil || ver.ExitCode != 0 {
		b.Fatalf("%s -version in the sandbox: %v %+v (is it E2B's envd?)", bin, err, ver)
	}
	b.Logf("comparing with E2B's envd %s (%s), in the same sandbox", strings.TrimSpace(string(ver.Stdout)), bin)
	stream, err := wc.StartProcess(ctx, envdclient.StartRequest{Cmd: inside, Args: []string{"-isnotfc", "-port", strconv.Itoa(e2bEnvdPort)}, User: "root"})
	if err != nil {
		b.Fatalf("start E2B's envd in the sandbox: %v", err)
	}
	if ev, err := stream.Next(); err != nil || ev.GetStart() == nil {
		b.Fatalf("start E2B's envd: no start event: %v", err)
	} else {
		pid := ev.GetStart().GetPid()
		b.Cleanup(func() {
			_ = wc.Signal(context.Background(), &envdprocess.ProcessSelector{Selector: &envdprocess.ProcessSelector_Pid{Pid: pid}}, envdprocess.Signal_SIGNAL_SIGKILL)
		})
	}
	_ = stream.Close()
	url := "http://" + net.JoinHostPort(ip.String(), strconv.Itoa(e2bEnvdPort))
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("E2B's envd in the sandbox did not answer /health within 10 s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	body, _ := json.Marshal(map[string]string{"accessToken": token})
	resp, err := http.Post(url+"/init", "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatalf("init E2B's envd: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b.Fatalf("init E2B's envd: %s", resp.Status)
	}
	return &sdkbench.Target{Name: "e2b", URL: url}
}

// goExecP50 starts cmd with args as sdkBenchUser 200 times (after 10 to
// warm up) through the envd at url and returns the p50 in ms of start
// request to end of stream.
func goExecP50(ctx context.Context, b *testing.B, tr http.RoundTripper, url, token, cmd string, args ...string) float64 {
	b.Helper()
	c := processconnect.NewProcessClient(&http.Client{Transport: tr}, url, connect.WithProtoJSON())
	msg := &envdprocess.StartRequest{Process: &envdprocess.ProcessConfig{Cmd: cmd, Args: args}}
	user := "Basic " + base64.StdEncoding.EncodeToString([]byte(sdkBenchUser+":"))
	lat := make([]time.Duration, 0, 200)
	for i := range 210 {
		req := connect.NewRequest(msg)
		req.Header().Set("X-Access-Token", token)
		req.Header().Set("Authorization", user)
		t0 := time.Now()
		s, err := c.Start(ctx, req)
		if err != nil {
			b.Fatalf("start %s at %s: %v", cmd, url, err)
		}
		var end *envdprocess.ProcessEvent_EndEvent
		for s.Receive() {
			if e := s.Msg().GetEvent().GetEnd(); e != nil {
				end = e
			}
		}
		if err := s.Err(); err != nil || end == nil || end.GetExitCode() != 0 {
			b.Fatalf("%s at %s: end %v, %v", cmd, url, end, err)
		}
		_ = s.Close()
		if i >= 10 {
			lat = append(lat, time.Since(t0))
		}
	}
	slices.Sort(lat)
	return float64(lat[len(lat)/2].Microseconds()) / 1000
}

// shellFloor is what one `/bin/bash -l -c true` costs in the sandbox with no
// envd in the way: a shell loop of 200 of them as sdkBenchUser, started
// through Wrenn's envd once and timed inside, in ms per run. It is the floor
// of every daemon's exec figure, since that is what the SDK's
// commands.run('true') runs.
func shellFloor(ctx context.Context, b *testing.B, wc *envdclient.Client) float64 {
	b.Helper()
	const n = 200
	loop := fmt.Sprintf(`TIMEFORMAT=%%R; time (for i in $(seq %d); do /bin/bash -l -c true; done)`, n)
	res, err := wc.Exec(ctx, envdclient.ExecRequest{Cmd: "/bin/bash", Args: []string{"-c", loop}, User: sdkBenchUser, Timeout: time.Minute})
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("time %d login shells in the sandbox: %v %+v", n, err, res)
	}
	secs, err := strconv.ParseFloat(strings.TrimSpace(string(res.Stderr)), 64)
	if err != nil {
		b.Fatalf("time %d login shells printed %q: %v", n, res.Stderr, err)
	}
	return secs * 1000 / n
}

// rawFilesThroughput writes sdkbench.Size bytes to the sandbox user's home
// with a raw-body POST /files and reads them back with GET /files, as
// plain HTTP with no SDK, and returns both rates in MiB/s.
func rawFilesThroughput(ctx context.Context, b *testing.B, tr http.RoundTripper, url, token string) (up, down float64) {
	b.Helper()
	hc := &http.Client{Transport: tr}
	target := url + "/files?path=raw.bin&username=" + sdkBenchUser
	data := sdkbench.Pattern()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(data))
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Access-Token", token)
	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		b.Fatalf("raw upload to %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	upS := time.Since(start).Seconds()
	if resp.StatusCode/100 != 2 {
		b.Fatalf("raw upload to %s: %s", url, resp.Status)
	}
	req, err = http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("X-Access-Token", token)
	start = time.Now()
	resp, err = hc.Do(req)
	if err != nil {
		b.Fatalf("raw download from %s: %v", url, err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	downS := time.Since(start).Seconds()
	if err != nil || resp.StatusCode != http.StatusOK || n != sdkbench.Size {
		b.Fatalf("raw download from %s: %s, %d bytes, %v", url, resp.Status, n, err)
	}
	return float64(sdkbench.Size) / (1 << 20) / upS, float64(sdkbench.Size) / (1 << 20) / downS
}

// sandboxProcMem returns the Rss and Pss in KiB (smaps_rollup) of the one
// process named exe in the network namespace at netnsPath. Pss splits each
// shared page between the processes that map it: the envd binary's pages,
// shared by every sandbox of a template, count once across them.
func sandboxProcMem(t testing.TB, netnsPath, exe string) (rss, pss int) {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat(netnsPath, &want); err != nil {
		t.Fatalf("stat the sandbox's netns: %v", err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ent := range ents {
		if _, err := strconv.Atoi(ent.Name()); err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", ent.Name(), "ns", "net"), &st) != nil || st.Ino != want.Ino || st.Dev != want.Dev {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != exe {
			continue
		}
		rollup, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "smaps_rollup"))
		if err != nil {
			continue // exited meanwhile
		}
		if found {
			t.Fatalf("more than one %q in the sandbox", exe)
		}
		found = true
		for line := range strings.Lines(string(rollup)) {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			switch f[0] {
			case "Rss:":
				rss, _ = strconv.Atoi(f[1])
			case "Pss:":
				pss, _ = strconv.Atoi(f[1])
			}
		}
	}
	if !found {
		t.Fatalf("no process %q in the sandbox", exe)
	}
	return rss, pss
}
