// Package e2bsdk tests envd against the unmodified e2b npm package: the SDK's
// debug mode with E2B_SANDBOX_URL talks straight to a standalone envd, with no
// control plane, and harness.mjs asserts every process, PTY and filesystem
// method the SDK exposes.
package e2bsdk

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/localsvc"
	"github.com/wrenn/wrenn/internal/testenv"
)

// testTimeout bounds the whole test, npm ci included (a warm npm cache makes
// that about two seconds; the harness itself takes about two more).
const testTimeout = 2 * time.Minute

// need skips t, or fails it in CI, when something the test needs is missing.
func need(t testing.TB, what string, ok bool) {
	t.Helper()
	if ok {
		return
	}
	if testenv.InCI() {
		t.Fatalf("CI=true but %s", what)
	}
	t.Skipf("skipping: %s", what)
}

func TestE2BSDK(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: installs the e2b package from the npm registry (not in -short)")
	}
	node, nodeErr := exec.LookPath("node")
	npm, npmErr := exec.LookPath("npm")
	need(t, "node is not installed (apt-get install nodejs npm)", nodeErr == nil)
	need(t, "npm is not installed (apt-get install npm)", npmErr == nil)
	need(t, "needs root: envd switches to other users for their commands", os.Geteuid() == 0)

	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()

	work := t.TempDir()
	envdBin := buildEnvd(ctx, t, work)
	modules := installSDK(ctx, t, npm, filepath.Join(work, "js"))
	userName := addUser(t)

	port, err := localsvc.FreePort()
	if err != nil {
		t.Fatalf("pick a port for envd: %v", err)
	}
	_, stopEnvd := startEnvd(ctx, t, envdBin, port)
	// Every sandbox's envd has an access token; the harness sends it and
	// signs URLs with it.
	token := initToken(ctx, t, port)

	scratch := filepath.Join(work, "scratch")
	if err := os.Mkdir(scratch, 0o755); err != nil {
		t.Fatalf("create scratch dir: %v", err)
	}
	cmd := exec.CommandContext(ctx, node, filepath.Join(modules, "harness.mjs"))
	cmd.Dir = modules
	cmd.Env = append(os.Environ(),
		"E2B_DEBUG=true",
		"E2B_SANDBOX_URL=http://127.0.0.1:"+strconv.Itoa(port),
		"WRENN_E2BSDK_DIR="+scratch,
		"WRENN_E2BSDK_USER="+userName,
		"WRENN_E2BSDK_TOKEN="+token,
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("e2b SDK harness failed: %v\n%s", err, out)
	}
	t.Logf("e2b SDK harness:\n%s", out)

	// envd must end cleanly on SIGTERM with everything the SDK started.
	if err := stopEnvd(); err != nil {
		t.Errorf("envd did not stop cleanly: %v", err)
	}
}

// initToken sends envd on port the POST /init a sandbox's agent sends, with
// a fresh access token, and returns the token.
func initToken(ctx context.Context, t testing.TB, port int) string {
	t.Helper()
	var b [16]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/init", port), strings.NewReader(`{"accessToken":"`+token+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST /init: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("POST /init = %s, want 204", resp.Status)
	}
	return token
}

// buildEnvd builds cmd/envd into dir the way the Makefile does (static).
func buildEnvd(ctx context.Context, t testing.TB, dir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("find the go tool to build envd: %v", err)
	}
	bin := filepath.Join(dir, "envd")
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "github.com/wrenn/wrenn/cmd/envd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build envd: %v\n%s", err, out)
	}
	return bin
}

// installSDK runs npm ci from the committed lock file in dir and copies the
// harness beside node_modules, so its imports resolve there.
func installSDK(ctx context.Context, t testing.TB, npm, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create %s: %v", dir, err)
	}
	for _, name := range []string{"package.json", "package-lock.json", "harness.mjs"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatalf("copy %s: %v", name, err)
		}
	}
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci (installs the pinned e2b package from the npm registry): %v\n%s", err, out)
	}
	return dir
}

// addUser creates a throwaway login user with a home, so the harness can run
// commands and write files as someone other than root, and deletes it (and
// its home) when the test ends.
func addUser(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("useradd"); err != nil {
		need(t, "useradd is not installed (package passwd)", false)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "wrenn-sdk-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("useradd", "--create-home", "--shell", "/bin/bash", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		// Processes of the user are gone once envd stopped; userdel refuses
		// while any remain, which the error below would show.
		if out, err := exec.Command("userdel", "--remove", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v\n%s", name, err, out)
		}
		if _, err := user.Lookup(name); err == nil {
			t.Errorf("user %s still exists after the test", name)
		}
	})
	return name
}

// startEnvd starts Wrenn's envd on port and waits for /health. It returns
// envd's pid and a function that sends SIGTERM and waits for envd to exit; a
// cleanup does that if the test ended first.
func startEnvd(ctx context.Context, t testing.TB, bin string, port int) (int, func() error) {
	t.Helper()
	return startDaemon(ctx, t, "envd", port, bin, "--port", strconv.Itoa(port), "--log-level", "debug")
}

// startDaemon starts argv, an envd that serves on port, collects its output
// for the failure log and waits until its GET /health answers 204, the reply
// of both Wrenn's and E2B's envd. The returned function sends SIGTERM and
// waits for the exit (SIGKILL after 10 s); a cleanup calls it too.
func startDaemon(ctx context.Context, t testing.TB, name string, port int, argv ...string) (int, func() error) {
	t.Helper()
	var logs bytes.Buffer
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = &logs
	cmd.Stderr = &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("%s ignored SIGTERM for 10 s; killed it", name)
		}
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Logf("stop %s: %v", name, err)
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, logs.String())
		}
	})

	url := fmt.Sprintf("http://127.0.0.1:%d/health", port)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				return cmd.Process.Pid, stop
			}
		}
		select {
		case err := <-done:
			t.Fatalf("%s exited before serving: %v\n%s", name, err, logs.String())
		case <-ctx.Done():
			t.Fatalf("%s did not answer %s: %v", name, url, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
