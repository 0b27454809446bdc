// Package e2e runs the whole platform for real: Postgres, Redis, the control
// plane and a host agent with the runc runtime, each as its own process on
// free loopback ports in throwaway directories, and drives it through the
// REST API as a user would.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/localsvc"
	"github.com/wrenn/wrenn/internal/runtime/oci"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/id"
)

// stack is one running platform.
type stack struct {
	t      testing.TB
	dir    string
	apiURL string
	apiKey string
	client *http.Client

	// agent is the running host agent; agentURL its RPC address; agentBin
	// and agentEnv start it again after killAgent.
	agent    *process
	agentURL string
	agentBin string
	agentEnv []string
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds the control plane and agent once per test binary.
func binaries(t testing.TB) string {
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "wrenn-e2e-bin-")
		if buildErr != nil {
			return
		}
		for name, pkg := range map[string]string{"wrenn-cp": "./cmd/control-plane", "wrenn-agent": "./cmd/host-agent"} {
			args := []string{"build", "-o", filepath.Join(binDir, name)}
			if raceEnabled {
				args = append(args, "-race")
			}
			cmd := exec.Command("go", append(args, pkg)...)
			cmd.Dir = repoRoot()
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %w\n%s", pkg, err, out)
				return
			}
		}
		// The runsc driver's OOM guard, found beside wrenn-agent as make
		// installs it; static (no -race, no cgo): it runs inside gVisor.
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, oci.RunscOOMGuardName), "./internal/runtime/oci/oomguard")
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build oomguard: %w\n%s", err, out)
			return
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

// requirements skips (or, in CI, fails) when the machine cannot run the
// stack: the agent needs root, the runtime's binary (runc unless the stack
// asks for another) and a built minimal image.
func requirements(t testing.TB, runtimeBinary string) string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (the agent creates namespaces, mounts and cgroups)")
	}
	if _, err := exec.LookPath(runtimeBinary); err != nil {
		missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", runtimeBinary, runtimeBinary))
	}
	img := testenv.Getenv("WRENN_TEST_IMAGE")
	if img == "" {
		missing = append(missing, "WRENN_TEST_IMAGE, the minimal image's rootfs.ext4 (make test builds it and sets it)")
	} else if _, err := os.Stat(img); err != nil {
		missing = append(missing, fmt.Sprintf("WRENN_TEST_IMAGE %s: %v", img, err))
	}
	if len(missing) > 0 {
		msg := "end-to-end stack needs: " + strings.Join(missing, "; ")
		if testenv.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return img
}

// process is a child daemon whose output goes to a file we can show on
// failure.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startProcess(t testing.TB, dir, name, bin string, env []string) *process {
	logPath := filepath.Join(dir, name+".stderr")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop sends SIGTERM and waits, killing after a grace period.
func (p *process) stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(40 * time.Second):
		t.Errorf("%s did not stop within 40 s of SIGINT; killing it", p.name)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// stackOptions are what a test may change about the platform startStack
// brings up.
type stackOptions struct {
	// runtime is the agent's WRENN_RUNTIME; "auto" (runc) by default.
	runtime string
	// cpEnv and agentEnv are KEY=value pairs added after the stack's own,
	// so they override them (os/exec keeps the last value of a key).
	cpEnv, agentEnv []string
}

// stackOption changes one of the stackOptions.
type stackOption func(*stackOptions)

// withRuntime runs the stack's agent with WRENN_RUNTIME=name, and requires
// that runtime's binary instead of runc's.
func withRuntime(name string) stackOption {
	return func(o *stackOptions) { o.runtime = name }
}

// withEnv adds KEY=value pairs to the control plane's and the agent's
// environment, overriding the stack's defaults (for example a larger
// WRENN_CPU_OVERCOMMIT or WRENN_SANDBOX_CIDR for a density run).
func withEnv(cp, agent []string) stackOption {
	return func(o *stackOptions) {
		o.cpEnv = append(o.cpEnv, cp...)
		o.agentEnv = append(o.agentEnv, agent...)
	}
}

// startStack brings up the whole platform and returns a client for it.
func startStack(t testing.TB, opts ...stackOption) *stack {
	o := stackOptions{runtime: "auto"}
	for _, opt := range opts {
		opt(&o)
	}
	binary := o.runtime
	if binary == "auto" {
		binary = "runc"
	}
	img := requirements(t, binary)
	bins := binaries(t)
	dsn := testenv.Postgres(t)
	redisURL := testenv.Redis(t)

	dir := t.TempDir()
	imgDir := filepath.Join(dir, "images", "minimal")
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "--sparse=always", img, filepath.Join(imgDir, "rootfs.ext4")).CombinedOutput(); err != nil {
		t.Fatalf("copy image: %v: %s", err, out)
	}
	cpPort, _ := localsvc.FreePort()
	agentPort, _ := localsvc.FreePort()
	s := &stack{
		t:      t,
		dir:    dir,
		apiURL: fmt.Sprintf("http://127.0.0.1:%d", cpPort),
		apiKey: id.NewAPIKey(),
		client: &http.Client{Transport: &http.Transport{}, Timeout: 2 * time.Minute},
	}
	t.Cleanup(s.client.CloseIdleConnections)

	cp := startProcess(t, dir, "control-plane", filepath.Join(bins, "wrenn-cp"), append([]string{
		"WRENN_DIR=" + dir,
		fmt.Sprintf("WRENN_CP_LISTEN=127.0.0.1:%d", cpPort),
		"DATABASE_URL=" + dsn,
		"REDIS_URL=" + redisURL,
		"WRENN_BOOTSTRAP_API_KEY=" + s.apiKey,
		"WRENN_DOMAIN=" + proxyDomain,
		"LOG_LEVEL=debug",
	}, o.cpEnv...))
	s.waitFor("control plane health", 30*time.Second, cp, func() bool {
		resp, err := s.client.Get(s.apiURL + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	var host struct {
		Token string `json:"registration_token"`
	}
	s.mustDo(http.MethodPost, "/v1/admin/hosts", map[string]string{"name": "e2e"}, http.StatusCreated, &host)

	s.agentURL = fmt.Sprintf("http://127.0.0.1:%d", agentPort)
	s.agentBin = filepath.Join(bins, "wrenn-agent")
	s.agentEnv = []string{
		"WRENN_DIR=" + dir,
		fmt.Sprintf("WRENN_AGENT_LISTEN=127.0.0.1:%d", agentPort),
		"WRENN_CP_URL=" + s.apiURL,
		"WRENN_RUNTIME=" + o.runtime,
		"WRENN_DEFAULT_ROOTFS_SIZE=1Gi",
		"WRENN_SANDBOX_CIDR=" + stackCIDR(t),
		"WRENN_AGENT_SHUTDOWN=destroy",
		"LOG_LEVEL=debug",
	}
	s.agentEnv = append(s.agentEnv, o.agentEnv...)
	agent := startProcess(t, dir, "host-agent", s.agentBin, append(slices.Clone(s.agentEnv), "WRENN_REGISTRATION_TOKEN="+host.Token))
	s.agent = agent
	s.waitFor("host online", 60*time.Second, agent, func() bool {
		var hosts struct {
			Hosts []struct{ Status string } `json:"hosts"`
		}
		code, err := s.do(http.MethodGet, "/v1/admin/hosts", nil, &hosts)
		return err == nil && code == http.StatusOK && len(hosts.Hosts) == 1 && hosts.Hosts[0].Status == "online"
	})
	// Children stop in reverse order of start through t.Cleanup: agent
	// first (it destroys what is left), then the control plane.
	return s
}

// killAgent kills the host agent with SIGKILL, as a crash would: it
// releases nothing, so its sandboxes keep running without it.
func (s *stack) killAgent() {
	s.t.Helper()
	if err := s.agent.cmd.Process.Kill(); err != nil {
		s.t.Fatalf("kill agent: %v", err)
	}
	<-s.agent.done
}

// restartAgent starts the agent again on the same WRENN_DIR and port, with
// the credentials it stored at registration and no registration token, and
// waits until it serves.
func (s *stack) restartAgent() {
	s.t.Helper()
	s.agent = startProcess(s.t, s.dir, fmt.Sprintf("host-agent-%d", time.Now().UnixNano()), s.agentBin, s.agentEnv)
	s.waitFor("restarted agent health", 60*time.Second, s.agent, func() bool {
		resp, err := s.client.Get(s.agentURL + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func (s *stack) waitFor(what string, timeout time.Duration, p *process, ok func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		select {
		case <-p.done:
			s.t.Fatalf("%s: %s exited:\n%s", what, p.name, p.tail())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: not within %s; %s says:\n%s", what, timeout, p.name, p.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// do sends one API request with the stack's key.
func (s *stack) do(method, path string, body, out any) (int, error) {
	return s.doKey(s.apiKey, method, path, body, out)
}

func (s *stack) doKey(key, method, path string, body, out any) (int, error) {
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return 0, err
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, s.apiURL+path, r)
	if err != nil {
		return 0, err
	}
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %s %s answer %q: %w", method, path, b, err)
		}
	}
	return resp.StatusCode, nil
}

func (s *stack) mustDo(method, path string, body any, want int, out any) {
	s.t.Helper()
	var raw json.RawMessage
	code, err := s.do(method, path, body, &raw)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	if code != want {
		s.t.Fatalf("%s %s: status %d, want %d: %s", method, path, code, want, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			s.t.Fatalf("%s %s: decode %s: %v", method, path, raw, err)
		}
	}
}

// sandbox is the API's sandbox record, as much as the tests read.
type sandbox struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

// waitStatus polls until the sandbox reaches want, failing on error status.
func (s *stack) waitStatus(sbID, want string, timeout time.Duration) sandbox {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var sb sandbox
		s.mustDo(http.MethodGet, "/v1/sandboxes/"+sbID, nil, http.StatusOK, &sb)
		if sb.Status == want {
			return sb
		}
		if sb.Status == "error" {
			s.t.Fatalf("sandbox %s went to error: %s", sbID, sb.Error)
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("sandbox %s is %s after %s, want %s", sbID, sb.Status, timeout, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type execResult struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	ExitCode int    `json:"exit_code"`
}
