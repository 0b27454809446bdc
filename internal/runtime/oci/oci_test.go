package oci

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/runtime"
	"github.com/wrenn/wrenn/internal/runtime/cgroups"
)

// fakeRunc models runc's container table so the driver's command sequences
// can be checked without root: it records every argv and answers state,
// list, create, start, run, pause, resume, kill and delete the way runc 1.1
// does, keeping a container's entry under --root as runc (a directory) or
// runsc (a state file) would, and writing the pid file of run.
type fakeRunc struct {
	mu         sync.Mutex
	cmds       []Cmd
	containers map[string]string // id → status
	fail       map[string]error  // subcommand → error to return
	// killLeaves keeps a container running after kill (a process that
	// will not die).
	killLeaves bool
	// initExits makes run write the pid of a process that is gone, as for
	// an init that exited at once.
	initExits bool
}

func newFakeRunc() *fakeRunc {
	return &fakeRunc{containers: map[string]string{}, fail: map[string]error{}}
}

func (f *fakeRunc) Run(_ context.Context, c Cmd) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds = append(f.cmds, c)
	// Skip the prefix: everything up to and including global flags.
	args := c.Args
	i := 0
	for i < len(args) && !isSubcommand(args[i]) {
		i++
	}
	if i == len(args) {
		return nil, fmt.Errorf("fake runc: no subcommand in %v", args)
	}
	sub, rest := args[i], args[i+1:]
	if err := f.fail[sub]; err != nil {
		return nil, &CommandError{Args: c.Args, Err: err}
	}
	id := ""
	if len(rest) > 0 {
		id = rest[len(rest)-1]
	}
	if sub == "kill" && len(rest) > 1 {
		id = rest[len(rest)-2] // kill [--all] <id> <signal>
	}
	missing := &CommandError{Args: c.Args, Stderr: "container does not exist", Err: errors.New("exit status 1")}
	entry := ""
	if root := flagValue(args[:i], "--root"); root != "" && id != "" {
		entry = filepath.Join(root, id)
		if slices.Contains(args[:i], "runsc") {
			entry += "_sandbox:" + id + ".state"
		}
	}
	switch sub {
	case "list":
		type entry struct {
			ID     string `json:"id"`
			Status string `json:"status"`
		}
		var es []entry
		for id, st := range f.containers {
			es = append(es, entry{id, st})
		}
		return json.Marshal(es) // nil slice → null, as runc prints
	case "state":
		st, ok := f.containers[id]
		if !ok {
			return nil, missing
		}
		return json.Marshal(map[string]any{"id": id, "pid": 42, "status": st})
	case "create", "run":
		if _, ok := f.containers[id]; ok {
			return nil, &CommandError{Args: c.Args, Err: errors.New("exists")}
		}
		f.containers[id] = "created"
		if err := os.MkdirAll(filepath.Dir(entry), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(entry, nil, 0o600); err != nil {
			return nil, err
		}
		if sub == "run" {
			f.containers[id] = "running"
			pid := os.Getpid()
			if f.initExits {
				f.containers[id] = "stopped"
				pid = 1 << 30 // above any pid_max: no such process
				if c.OutputFile != "" {
					if err := os.WriteFile(c.OutputFile, []byte("early output\nexec /init: no such file or directory\n"), 0o600); err != nil {
						return nil, err
					}
				}
			}
			if err := os.WriteFile(flagValue(rest, "--pid-file"), []byte(strconv.Itoa(pid)), 0o600); err != nil {
				return nil, err
			}
		}
	case "start":
		if f.containers[id] != "created" {
			return nil, missing
		}
		f.containers[id] = "running"
	case "pause", "resume":
		st, ok := f.containers[id]
		if !ok {
			return nil, missing
		}
		if sub == "pause" && st == "running" {
			f.containers[id] = "paused"
		} else if sub == "resume" && st == "paused" {
			f.containers[id] = "running"
		} else {
			return nil, &CommandError{Args: c.Args, Err: errors.New("wrong state")}
		}
	case "kill":
		if _, ok := f.containers[id]; !ok {
			return nil, missing
		}
		if !f.killLeaves {
			f.containers[id] = "stopped"
		}
	case "delete":
		if _, ok := f.containers[id]; !ok {
			return nil, missing
		}
		delete(f.containers, id)
		_ = os.Remove(entry)
	}
	return nil, nil
}

// flagValue is the argument after flag in args, or "".
func flagValue(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

func isSubcommand(s string) bool {
	switch s {
	case "list", "state", "create", "start", "run", "pause", "resume", "kill", "delete":
		return true
	}
	return false
}

// subcommands returns the recorded commands as "sub arg…" after the prefix.
func (f *fakeRunc) subcommands(prefixLen int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.cmds {
		out = append(out, strings.Join(c.Args[prefixLen:], " "))
	}
	return out
}

const fakeMountinfo = `31 30 0:27 / ROOT/cpu rw - cgroup cgroup rw,cpu
32 30 0:28 / ROOT/cpuacct rw - cgroup cgroup rw,cpuacct
33 30 0:29 / ROOT/memory rw - cgroup cgroup rw,memory
34 30 0:30 / ROOT/pids rw - cgroup cgroup rw,pids
36 30 0:32 / ROOT/unified rw - cgroup2 cgroup2 rw
`

type fixture struct {
	d      *Driver
	runc   *fakeRunc
	cgRoot string
}

func newFixture(t *testing.T, mod func(*Config)) fixture {
	t.Helper()
	cgRoot := t.TempDir()
	cg, err := cgroups.Parse(cgRoot, strings.NewReader(strings.ReplaceAll(fakeMountinfo, "ROOT", cgRoot)))
	if err != nil {
		t.Fatal(err)
	}
	fr := newFakeRunc()
	cfg := Config{Binary: "runc", Root: filepath.Join(t.TempDir(), "runc"), Runner: fr, Cgroups: cg, StopTimeout: 200 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return fixture{d: d, runc: fr, cgRoot: cgRoot}
}

func testSpec(t *testing.T, id string) runtime.Spec {
	t.Helper()
	return runtime.Spec{
		ID:        id,
		StateDir:  t.TempDir(),
		RootFS:    t.TempDir(),
		NetNSPath: "/var/run/netns/wrenn-" + id,
		Hostname:  "box",
		Args:      []string{"/usr/local/bin/wrenn-init"},
		Env:       []string{"A=1"},
		VCPUs:     2,
		MemoryMB:  512,
		Pids:      256,
	}
}

func TestBuildSpec(t *testing.T) {
	t.Parallel()
	s := runtime.Spec{
		ID: "sb-1", StateDir: "/state", RootFS: "/rootfs", NetNSPath: "/var/run/netns/n1",
		Hostname: "h", Args: []string{"/init", "x"}, Env: []string{"A=1"}, VCPUs: 2, MemoryMB: 512, Pids: 100,
	}
	spec, err := buildSpec(s, "/wrenn", DefaultNofile)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Root != (ociRoot{Path: "/rootfs", Readonly: false}) {
		t.Errorf("root %+v", spec.Root)
	}
	p := spec.Process
	if p.Terminal || p.User != (ociUser{}) || p.Cwd != "/" || p.NoNewPrivileges {
		t.Errorf("process %+v", p)
	}
	if !slices.Equal(p.Args, []string{"/init", "x"}) || !slices.Equal(p.Env, []string{"A=1", defaultPath}) {
		t.Errorf("args %v env %v", p.Args, p.Env)
	}
	if !slices.Equal(p.Rlimits, []ociRlimit{{Type: "RLIMIT_NOFILE", Hard: 1048576, Soft: 1048576}}) {
		t.Errorf("rlimits %v", p.Rlimits)
	}
	for _, c := range []string{"CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL",
		"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE", "CAP_MKNOD", "CAP_FSETID", "CAP_SETPCAP", "CAP_SETFCAP", "CAP_NET_RAW"} {
		for name, set := range map[string][]string{"bounding": p.Capabilities.Bounding, "effective": p.Capabilities.Effective, "permitted": p.Capabilities.Permitted} {
			if !slices.Contains(set, c) {
				t.Errorf("%s capabilities lack %s", name, c)
			}
		}
	}
	for _, c := range []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_SYS_TIME"} {
		if slices.Contains(p.Capabilities.Bounding, c) {
			t.Errorf("bounding set has %s", c)
		}
	}
	if spec.Hostname != "h" {
		t.Errorf("hostname %q", spec.Hostname)
	}
	wantNS := []ociNS{{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}, {Type: "network", Path: "/var/run/netns/n1"}}
	if !slices.Equal(spec.Linux.Namespaces, wantNS) {
		t.Errorf("namespaces %v", spec.Linux.Namespaces)
	}
	if spec.Linux.CgroupsPath != "/wrenn/sb-1" {
		t.Errorf("cgroupsPath %q", spec.Linux.CgroupsPath)
	}
	r := spec.Linux.Resources
	if r.Memory == nil || r.Memory.Limit != 512<<20 || r.Memory.Swap != 512<<20 {
		t.Errorf("memory %+v", r.Memory)
	}
	if r.CPU == nil || r.CPU.Quota != 200000 || r.CPU.Period != 100000 {
		t.Errorf("cpu %+v", r.CPU)
	}
	if r.Pids == nil || r.Pids.Limit != 100 {
		t.Errorf("pids %+v", r.Pids)
	}
	mounts := map[string]ociMnt{}
	for _, m := range spec.Mounts {
		mounts[m.Destination] = m
	}
	for _, dst := range []string{"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"} {
		if _, ok := mounts[dst]; !ok {
			t.Errorf("no %s mount", dst)
		}
	}
	if !slices.Contains(mounts["/dev/pts"].Options, "ptmxmode=0666") || !slices.Contains(mounts["/dev/pts"].Options, "newinstance") {
		t.Errorf("devpts options %v", mounts["/dev/pts"].Options)
	}
	if !slices.Contains(mounts["/sys"].Options, "ro") {
		t.Errorf("sysfs not read-only: %v", mounts["/sys"].Options)
	}
	if !slices.Contains(spec.Linux.MaskedPaths, "/proc/kcore") || !slices.Contains(spec.Linux.ReadonlyPaths, "/proc/sys") {
		t.Errorf("masked %v readonly %v", spec.Linux.MaskedPaths, spec.Linux.ReadonlyPaths)
	}
	// The JSON is what runc reads: check the names of a few fields.
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"ociVersion":"1.0.2"`, `"cgroupsPath":"/wrenn/sb-1"`, `"noNewPrivileges":false`, `"readonly":false`, `"path":"/var/run/netns/n1"`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("config.json lacks %s", key)
		}
	}
}

func TestBuildSpecDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		spec    runtime.Spec
		wantErr bool
		check   func(t *testing.T, s ociSpec)
	}{
		{
			name:    "no args",
			spec:    runtime.Spec{ID: "sb-1"},
			wantErr: true,
		},
		{
			name: "no limits",
			spec: runtime.Spec{ID: "sb-1", Args: []string{"/init"}},
			check: func(t *testing.T, s ociSpec) {
				r := s.Linux.Resources
				if r.Memory != nil || r.CPU != nil || r.Pids != nil {
					t.Errorf("zero limits were set: %+v", r)
				}
				if s.Hostname != "sb-1" {
					t.Errorf("hostname %q, want the id", s.Hostname)
				}
				if ns := s.Linux.Namespaces[4]; ns != (ociNS{Type: "network"}) {
					t.Errorf("network namespace %+v, want a fresh one", ns)
				}
			},
		},
		{
			name: "PATH kept",
			spec: runtime.Spec{ID: "sb-1", Args: []string{"/init"}, Env: []string{"PATH=/x"}},
			check: func(t *testing.T, s ociSpec) {
				if !slices.Equal(s.Process.Env, []string{"PATH=/x"}) {
					t.Errorf("env %v", s.Process.Env)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := buildSpec(tt.spec, "/wrenn/", DefaultNofile)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err %v, wantErr %v", err, tt.wantErr)
			}
			if tt.check != nil {
				tt.check(t, s)
			}
		})
	}
}

func TestCreateCommands(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	s := testSpec(t, "sb-1")
	if err := f.d.Create(context.Background(), s); err != nil {
		t.Fatalf("Create: %v", err)
	}
	log := filepath.Join(s.StateDir, runtimeLog)
	// One command: no listing before it and no state query after it.
	want := []string{
		"--log " + log + " --log-format json run --detach --bundle " + s.StateDir + " --pid-file " + filepath.Join(s.StateDir, "init.pid") + " sb-1",
	}
	if got := f.runc.subcommands(3); !slices.Equal(got, want) {
		t.Fatalf("commands\n got %q\nwant %q", got, want)
	}
	for _, c := range f.runc.cmds {
		if !slices.Equal(c.Args[:3], []string{"runc", "--root", f.d.Root()}) {
			t.Errorf("prefix %v", c.Args[:3])
		}
	}
	if got := f.runc.cmds[0].OutputFile; got != filepath.Join(s.StateDir, initLog) {
		t.Errorf("run output to %q, want the init log", got)
	}
	data, err := os.ReadFile(filepath.Join(s.StateDir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var spec ociSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	if spec.Root.Path != s.RootFS || spec.Linux.CgroupsPath != "/wrenn/sb-1" {
		t.Errorf("bundle root %q cgroups %q", spec.Root.Path, spec.Linux.CgroupsPath)
	}
	f.runc.cmds = nil
	if err := f.d.Create(context.Background(), s); err == nil {
		t.Fatal("second Create with the same id succeeded")
	}
	if got := f.runc.subcommands(3); len(got) != 0 {
		t.Errorf("duplicate Create ran %q", got)
	}
	if st, _ := f.d.State(context.Background(), "sb-1"); st != runtime.StateRunning {
		t.Fatalf("existing sandbox disturbed by the duplicate Create: %q", st)
	}
}

func TestCreateInitExitsAtOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.runc.initExits = true
	s := testSpec(t, "sb-1")
	err := f.d.Create(context.Background(), s)
	if err == nil {
		t.Fatal("Create succeeded with an init that is gone")
	}
	// The output's end travels with the error: the file goes with the
	// failed sandbox's directory.
	if !strings.Contains(err.Error(), "init is stopped right after start") || !strings.Contains(err.Error(), "exec /init: no such file or directory") {
		t.Errorf("error %q does not say the init stopped and what it printed", err)
	}
	if len(f.runc.containers) != 0 {
		t.Errorf("containers left: %v", f.runc.containers)
	}
	if _, err := os.Stat(filepath.Join(f.d.Root(), "sb-1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state entry left: %v", err)
	}
}

func TestCreateFailureCleansUp(t *testing.T) {
	t.Parallel()
	for _, failing := range []string{"run"} {
		t.Run(failing, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, nil)
			f.runc.fail[failing] = errors.New("exit status 1")
			s := testSpec(t, "sb-1")
			// runc's reason goes to its JSON log.
			os.WriteFile(filepath.Join(s.StateDir, runtimeLog),
				[]byte(`{"level":"info","msg":"x"}`+"\n"+`{"level":"error","msg":"exec: /init: no such file"}`+"\n"), 0o600)
			// A leftover cgroup (as a killed runc would leave) must go too.
			os.MkdirAll(filepath.Join(f.cgRoot, "memory/wrenn/sb-1"), 0o755)
			err := f.d.Create(context.Background(), s)
			if err == nil {
				t.Fatal("Create succeeded")
			}
			if !strings.Contains(err.Error(), "exec: /init: no such file") {
				t.Errorf("error %q does not carry runc's reason", err)
			}
			if len(f.runc.containers) != 0 {
				t.Errorf("containers left: %v", f.runc.containers)
			}
			if left := f.d.Cgroups().Existing("/wrenn/sb-1"); len(left) != 0 {
				t.Errorf("cgroups left: %v", left)
			}
		})
	}
}

func TestCreateRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		mod  func(s *runtime.Spec)
	}{
		{"bad id", func(s *runtime.Spec) { s.ID = "../etc" }},
		{"empty id", func(s *runtime.Spec) { s.ID = "" }},
		{"missing rootfs", func(s *runtime.Spec) { s.RootFS = filepath.Join(s.RootFS, "nope") }},
		{"relative state dir", func(s *runtime.Spec) { s.StateDir = "state" }},
		{"no args", func(s *runtime.Spec) { s.Args = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, nil)
			s := testSpec(t, "sb-1")
			tt.mod(&s)
			if err := f.d.Create(context.Background(), s); err == nil {
				t.Fatal("Create succeeded")
			}
			if len(f.runc.containers) != 0 {
				t.Errorf("containers left: %v", f.runc.containers)
			}
			for _, c := range f.runc.subcommands(3) {
				if strings.Contains(c, " run ") {
					t.Errorf("runc run ran: %q", c)
				}
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	s := testSpec(t, "sb-1")
	if err := f.d.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		op   func() error
		want runtime.State
	}{
		{func() error { return f.d.Pause(ctx, "sb-1") }, runtime.StatePaused},
		{func() error { return f.d.Resume(ctx, "sb-1") }, runtime.StateRunning},
		{func() error { return f.d.Pause(ctx, "sb-1") }, runtime.StatePaused},
	}
	for i, st := range steps {
		if err := st.op(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got, err := f.d.State(ctx, "sb-1"); err != nil || got != st.want {
			t.Fatalf("step %d: state %q %v, want %q", i, got, err, st.want)
		}
	}
	if ids, err := f.d.List(ctx); err != nil || !slices.Equal(ids, []string{"sb-1"}) {
		t.Fatalf("List = %v, %v", ids, err)
	}
	// Destroy from paused: kill --all (runc thaws to deliver it), then delete.
	f.runc.cmds = nil
	if err := f.d.Destroy(ctx, "sb-1"); err != nil {
		t.Fatal(err)
	}
	want := []string{"state sb-1", "kill --all sb-1 KILL", "state sb-1", "delete --force sb-1"}
	if got := f.runc.subcommands(3); !slices.Equal(got, want) {
		t.Fatalf("destroy commands\n got %q\nwant %q", got, want)
	}
	if ids, err := f.d.List(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("List after destroy = %v, %v", ids, err)
	}
}

func TestNotFound(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	ops := map[string]func() error{
		"Pause":  func() error { return f.d.Pause(ctx, "sb-x") },
		"Resume": func() error { return f.d.Resume(ctx, "sb-x") },
		"State":  func() error { _, err := f.d.State(ctx, "sb-x"); return err },
		"Stats":  func() error { _, err := f.d.Stats(ctx, "sb-x"); return err },
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, runtime.ErrNotFound) {
			t.Errorf("%s of an unknown id: %v, want ErrNotFound", name, err)
		}
	}
	// A failure on a known id is not ErrNotFound.
	if err := f.d.Create(ctx, testSpec(t, "sb-1")); err != nil {
		t.Fatal(err)
	}
	if err := f.d.Resume(ctx, "sb-1"); err == nil || errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Resume of a running sandbox: %v, want a plain error", err)
	}
	f.runc.fail["list"] = errors.New("boom")
	if err := f.d.Pause(ctx, "sb-x"); err == nil || errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Pause when listing fails: %v, want a plain error", err)
	}
}

func TestDestroyUnknownSweepsCgroups(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	for _, d := range []string{"cpu/wrenn/sb-1", "pids/wrenn/sb-1", "unified/wrenn/sb-1", "memory/wrenn/sb-2"} {
		if err := os.MkdirAll(filepath.Join(f.cgRoot, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ {
		if err := f.d.Destroy(context.Background(), "sb-1"); err != nil {
			t.Fatalf("Destroy #%d of an unknown id: %v", i, err)
		}
	}
	if left := f.d.Cgroups().Existing("/wrenn/sb-1"); len(left) != 0 {
		t.Fatalf("cgroups left: %v", left)
	}
	if _, err := os.Stat(filepath.Join(f.cgRoot, "memory/wrenn/sb-2")); err != nil {
		t.Fatalf("another sandbox's cgroup removed: %v", err)
	}
	for _, c := range f.runc.subcommands(3) {
		if strings.HasPrefix(c, "kill") || strings.HasPrefix(c, "delete") {
			t.Errorf("ran %q for an unknown id", c)
		}
	}
}

func TestDestroyStuck(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	if err := f.d.Create(ctx, testSpec(t, "sb-1")); err != nil {
		t.Fatal(err)
	}
	f.runc.killLeaves = true
	start := time.Now()
	if err := f.d.Destroy(ctx, "sb-1"); err == nil {
		t.Fatal("Destroy of a sandbox that does not stop succeeded")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Destroy waited %s past its 200ms stop timeout", took)
	}
	for _, c := range f.runc.subcommands(3) {
		if strings.HasPrefix(c, "delete") {
			t.Errorf("deleted a sandbox that was still running: %q", c)
		}
	}
}

func TestStateMapping(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status  string
		want    runtime.State
		wantErr bool
	}{
		{"running", runtime.StateRunning, false},
		{"paused", runtime.StatePaused, false},
		{"pausing", runtime.StatePaused, false},
		{"stopped", runtime.StateStopped, false},
		{"created", runtime.StateStopped, false},
		{"weird", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.status, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, nil)
			f.runc.containers["sb-1"] = tt.status
			got, err := f.d.State(context.Background(), "sb-1")
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("State = %q, %v; want %q (err %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestStats(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	files := map[string]string{
		"cpuacct/wrenn/sb-1/cpuacct.usage":        "2000000000",
		"memory/wrenn/sb-1/memory.usage_in_bytes": "1048576",
		"pids/wrenn/sb-1/pids.current":            "5",
	}
	for p, c := range files {
		p = filepath.Join(f.cgRoot, p)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(c+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st, err := f.d.Stats(context.Background(), "sb-1")
	if err != nil {
		t.Fatal(err)
	}
	if st != (runtime.Stats{CPUUsage: 2 * time.Second, MemoryBytes: 1 << 20, Pids: 5}) {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestRunscStylePrefix(t *testing.T) {
	t.Parallel()
	wrap := []string{"unshare", "-m", "--propagation", "private", "sh", "-c", `mount -t tmpfs -o size=4k,ro hide /proc/sys/net && exec "$@"`, "sh"}
	f := newFixture(t, func(c *Config) {
		c.Binary = "/usr/bin/runsc"
		c.Root = "/run/wrenn/runsc"
		c.GlobalArgs = []string{"--platform=ptrace"}
		c.Wrap = wrap
	})
	if f.d.Name() != "runsc" {
		t.Errorf("Name = %q", f.d.Name())
	}
	if _, err := f.d.List(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(wrap), "/usr/bin/runsc", "--root", "/run/wrenn/runsc", "--platform=ptrace", "list", "--format", "json")
	if got := f.runc.cmds[0].Args; !slices.Equal(got, want) {
		t.Fatalf("argv\n got %q\nwant %q", got, want)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	cg, err := cgroups.Parse("/", strings.NewReader("31 30 0:27 / /cpu rw - cgroup cgroup rw,cpu\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []Config{
		{Root: "relative", Cgroups: cg},
		{CgroupParent: "wrenn", Cgroups: cg},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	d, err := New(Config{Cgroups: cg})
	if err != nil {
		t.Fatal(err)
	}
	if d.Name() != "runc" || d.Root() != "/run/wrenn/runc" || d.CgroupPath("sb-1") != "/wrenn/sb-1" {
		t.Errorf("defaults: name %q root %q cgroup %q", d.Name(), d.Root(), d.CgroupPath("sb-1"))
	}
}

func TestAvailable(t *testing.T) {
	t.Parallel()
	if err := Available("wrenn-no-such-runtime"); !errors.Is(err, runtime.ErrUnavailable) {
		t.Errorf("missing binary: %v, want ErrUnavailable", err)
	}
	dir := t.TempDir()
	broken := filepath.Join(dir, "broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Available(broken); !errors.Is(err, runtime.ErrUnavailable) {
		t.Errorf("failing binary: %v, want ErrUnavailable", err)
	}
	working := filepath.Join(dir, "working")
	if err := os.WriteFile(working, []byte("#!/bin/sh\necho v1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Available(working); err != nil {
		t.Errorf("working binary: %v", err)
	}
}

func TestExecRunner(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	out, err := ExecRunner{}.Run(ctx, Cmd{Args: []string{"sh", "-c", "echo out; echo err >&2"}})
	if err != nil || string(out) != "out\n" {
		t.Fatalf("Run = %q, %v", out, err)
	}
	_, err = ExecRunner{}.Run(ctx, Cmd{Args: []string{"sh", "-c", "echo why >&2; exit 2"}})
	var ce *CommandError
	if !errors.As(err, &ce) || !strings.Contains(ce.Stderr, "why") {
		t.Fatalf("failure: %v", err)
	}
	// With an output file, a background child holding the descriptor must
	// not keep Run waiting (runc's container does exactly that).
	file := filepath.Join(t.TempDir(), "out.log")
	start := time.Now()
	if _, err := (ExecRunner{}).Run(ctx, Cmd{Args: []string{"sh", "-c", "echo started; sleep 5 & exit 0"}, OutputFile: file}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Run waited %s for a background child", took)
	}
	if b, _ := os.ReadFile(file); string(b) != "started\n" {
		t.Fatalf("output file %q", b)
	}
}
