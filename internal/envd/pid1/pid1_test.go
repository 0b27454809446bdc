package pid1

import (
	"bufio"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn/wrenn/pkg/config"
)

const helperEnv = "WRENN_PID1_TEST_HELPER"

// TestMain doubles as the init under test: started with helperEnv in a new
// PID and mount namespace, the test binary becomes PID 1 and supervises the
// "envd" named by WRENN_ENVD.
func TestMain(m *testing.M) {
	env := config.Env()
	if v, _ := env(helperEnv); v == "1" {
		os.Exit(helperInit())
	}
	os.Exit(m.Run())
}

func helperInit() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// A /proc of the new PID namespace, in the private mount namespace only.
	if err := unix.Mount("", "/", "", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
		log.Error("make mounts private", "error", err)
		return 100
	}
	if err := unix.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		log.Error("mount proc", "error", err)
		return 101
	}
	cfg, err := Load(config.Env(), os.Args[1:], os.Environ())
	if err != nil {
		log.Error("load", "error", err)
		return 102
	}
	return Supervise(log, cfg)
}

// startInit runs script as envd under a fresh PID 1 made of this test binary.
func startInit(t *testing.T, script string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for PID and mount namespaces")
	}
	cmd := exec.Command(os.Args[0], "-c", script)
	cmd.Env = append(os.Environ(), helperEnv+"=1", "WRENN_ENVD=/bin/sh")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start init in new namespaces: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, bufio.NewReader(out)
}

func exitCode(t *testing.T, cmd *exec.Cmd, out io.Reader) int {
	t.Helper()
	_, _ = io.Copy(io.Discard, out)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("init did not exit")
	}
	return cmd.ProcessState.ExitCode()
}

func TestSupervise(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		script string
		want   int
	}{
		{"exit status passes through", "exit 7", 7},
		{"signal death is 128+n", "kill -9 $$", 137},
		// The inner shell exits at once, so sleep is re-parented to init; once
		// it has exited it must be gone, not a zombie.
		{"orphans are reaped", `pid=$(sh -c 'sleep 0.2 >/dev/null 2>&1 & echo $!'); sleep 1; if [ -e /proc/$pid ]; then cat /proc/$pid/stat >&2; exit 9; fi; [ "$PPID" != 1 ] && exit 10; exit 0`, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cmd, out := startInit(t, tc.script)
			if got := exitCode(t, cmd, out); got != tc.want {
				t.Fatalf("init exited %d, want %d", got, tc.want)
			}
		})
	}
}

func TestSuperviseForwardsSIGTERM(t *testing.T) {
	t.Parallel()
	cmd, out := startInit(t, `trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done`)
	line, err := out.ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("read ready: %q %v", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := exitCode(t, cmd, out); got != 42 {
		t.Fatalf("init exited %d, want envd's 42 from its TERM trap", got)
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()
	lookup := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	env := map[string]string{"WRENN_ENVD": "/opt/envd", "WRENN_HOSTNAME": "sb-abc", "WRENN_DNS": "1.1.1.1, 2606:4700:4700::1111"}
	cfg, err := Load(lookup(env), []string{"--port", "1"}, []string{"HOME=/", "WRENN_DNS=1.1.1.1", "TERM=linux"})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Envd: "/opt/envd", Args: []string{"--port", "1"}, Hostname: "sb-abc",
		Env: []string{"HOME=/", "TERM=linux", "PATH=" + defaultPath},
		DNS: []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("2606:4700:4700::1111")},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("Load = %+v, want %+v", cfg, want)
	}
	def, err := Load(lookup(nil), nil, []string{"PATH=/x"})
	if err != nil || def.Envd != DefaultEnvd || len(def.Env) != 1 || def.Hostname != "" || def.DNS != nil {
		t.Fatalf("defaults: %+v %v", def, err)
	}
	for _, bad := range []map[string]string{{"WRENN_DNS": "8.8.8.8,example.com"}, {"WRENN_HOSTNAME": "a b"}, {"WRENN_HOSTNAME": strings.Repeat("h", 65)}} {
		if _, err := Load(lookup(bad), nil, nil); err == nil {
			t.Errorf("Load(%v) accepted", bad)
		}
	}
}

func TestResolvConf(t *testing.T) {
	t.Parallel()
	got := string(ResolvConf([]netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::1")}))
	want := "# written by wrenn-init\nnameserver 10.0.0.1\nnameserver ::1\n"
	if got != want {
		t.Fatalf("ResolvConf = %q, want %q", got, want)
	}
}

func TestMountPoints(t *testing.T) {
	t.Parallel()
	info := `22 1 0:21 / / rw,relatime - overlay overlay rw
23 22 0:22 / /proc rw,nosuid - proc proc rw
24 22 0:5 / /dev rw,nosuid - tmpfs tmpfs rw,mode=755
25 24 0:23 / /dev/pts rw - devpts devpts rw
26 22 0:40 / /mnt/with\040space rw - tmpfs tmpfs rw
27 22 0:41 / /odd\134name rw - tmpfs tmpfs rw
short line
`
	got, err := MountPoints(strings.NewReader(info))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"/": true, "/proc": true, "/dev": true, "/dev/pts": true, "/mnt/with space": true, `/odd\name`: true}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("MountPoints = %v, want %v", got, want)
	}
	// The real table parses and includes /.
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Skipf("no mountinfo: %v", err)
	}
	defer f.Close()
	real, err := MountPoints(f)
	if err != nil || !real["/"] {
		t.Fatalf("real mountinfo: %v %v", real, err)
	}
}

func FuzzMountPoints(f *testing.F) {
	f.Add("23 22 0:22 / /proc rw - proc proc rw\n")
	f.Add(`1 2 3 4 /a\040b\ 5`)
	f.Add(`1 2 3 4 \1`)
	f.Fuzz(func(t *testing.T, data string) {
		points, err := MountPoints(strings.NewReader(data))
		if err != nil {
			return
		}
		for p := range points {
			if p == "" {
				t.Fatalf("empty mount point from %q", data)
			}
		}
	})
}

func TestEnsureHostsEntry(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name, before, want string
	}{
		{"missing file", "", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tsb-1\n"},
		{"no newline", "127.0.0.1 localhost", "127.0.0.1 localhost\n127.0.1.1\tsb-1\n"},
		{"already there", "127.0.0.1 localhost\n10.0.0.2 sb-1 other\n", "127.0.0.1 localhost\n10.0.0.2 sb-1 other\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if tc.before != "" {
				if err := os.WriteFile(path, []byte(tc.before), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := ensureHostsEntry(path, "sb-1"); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(path)
			if string(got) != tc.want {
				t.Fatalf("hosts = %q, want %q", got, tc.want)
			}
			if _, err := os.Stat(path + ".wrenn-init"); !os.IsNotExist(err) {
				t.Fatalf("temporary file left: %v", err)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	if ExitCode(true, 3, false, 0) != 3 || ExitCode(false, -1, true, 15) != 143 || ExitCode(false, 0, false, 0) != 1 {
		t.Fatal("ExitCode mapping wrong")
	}
}

func TestMountMissing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	mounts := []Mount{
		{Target: a, FSType: "tmpfs", Source: "wrenn-test", Data: "size=1m"},
		{Target: b, FSType: "no-such-fs", Source: "x", Fallback: &Mount{Target: b, FSType: "tmpfs", Source: "wrenn-test", Data: "size=1m"}},
	}
	t.Cleanup(func() {
		for _, p := range []string{a, b} {
			for unix.Unmount(p, 0) == nil {
			}
		}
	})
	log := slog.New(slog.DiscardHandler)
	// Twice: the second pass must see both mounted and mount nothing more.
	for range 2 {
		if err := MountMissing(log, mounts); err != nil {
			t.Fatalf("MountMissing: %v", err)
		}
	}
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{a, b} {
		if n := strings.Count(string(raw), " "+p+" "); n != 1 {
			t.Errorf("%s mounted %d times, want once", p, n)
		}
	}
	bad := []Mount{{Target: filepath.Join(dir, "c"), FSType: "no-such-fs", Source: "x"}}
	if err := MountMissing(log, bad); err == nil {
		t.Fatal("mounting an unknown filesystem succeeded")
	}
}
