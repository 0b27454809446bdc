// Package oci runs Wrenn sandboxes as OCI containers through a runc-compatible
// binary: runc today, gVisor's runsc with a few extra arguments (see Config).
// The driver writes an OCI bundle per sandbox, drives the binary's
// create/start/pause/resume/kill/delete commands against a state root of its
// own, and reads resource use straight from the sandbox's cgroup.
package oci

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wrenn/wrenn/internal/runtime"
	"github.com/wrenn/wrenn/internal/runtime/cgroups"
)

// Defaults for Config fields left empty.
const (
	DefaultBinary       = "runc"
	DefaultCgroupParent = "/wrenn"
	DefaultStopTimeout  = 10 * time.Second
)

// Config configures a Driver. Only Binary and Root matter in production; the
// rest exists for runsc and for tests.
//
// For gVisor, Runsc returns the Config this host's runsc needs.
type Config struct {
	// Binary is the runtime executable, a name looked up in PATH or a path.
	Binary string
	// Name is what Driver.Name reports; the base name of Binary if empty.
	Name string
	// Root is the runtime's state directory (--root), e.g. /run/wrenn/runc.
	// Every container under it belongs to this driver: List reports them
	// all. Defaults to /run/wrenn/<Name>.
	Root string
	// GlobalArgs are flags placed before every subcommand.
	GlobalArgs []string
	// Wrap is an argv prefix every command runs under.
	Wrap []string
	// CgroupParent is the cgroup under which each sandbox gets <parent>/<id>.
	CgroupParent string
	// PidsOverhead is added to every sandbox's pids limit: the tasks the
	// runtime itself runs inside the sandbox's cgroup (runsc's Sentry and
	// gofer threads), so the workload still gets the Spec.Pids it asked for.
	PidsOverhead int64
	// PidsPerTask, when set, moves the enforcement of Spec.Pids into the
	// sandbox's own kernel (gVisor): the init gets RLIMIT_NPROC = Spec.Pids,
	// and the host cgroup, which stays the host's protection, gets room for
	// the host tasks that many guest tasks cost (PidsPerTask each, plus
	// PidsOverhead), so a fork bomb stops inside before the runtime itself
	// runs out of tasks. See HostPids.
	PidsPerTask int64
	// HostPidsCap bounds what PidsPerTask grants: the host cgroup's limit
	// never passes max(Spec.Pids, HostPidsCap) plus PidsOverhead. 0 is no
	// bound.
	HostPidsCap int64
	// OOMGuard is the host path of a static oomguard binary (package
	// oomguard). When set, a sandbox with a memory limit runs its init under
	// it: for a runtime with no OOM killer of its own (gVisor), it kills the
	// largest process once the guest's memory passes Spec.MemoryMB, and the
	// host cgroup gets OOMHeadroomMB more so that it acts first.
	OOMGuard string
	// OOMHeadroomMB is how far a guarded sandbox may overshoot its limit
	// before the host cgroup stops it: what the guard's poll and a single
	// allocation in flight can add.
	OOMHeadroomMB uint32
	// MemoryOverheadMB is added to every sandbox's memory limit for the
	// same reason: runsc's Sentry (about 40 MB resident) is charged to the
	// sandbox's memory cgroup beside the workload.
	MemoryOverheadMB uint32
	// ResumeBeforeKill makes Destroy resume a paused sandbox before killing
	// it: runsc delivers no signal while its Sentry is paused, whereas runc
	// thaws a frozen cgroup itself to deliver SIGKILL.
	ResumeBeforeKill bool
	// Cgroups is the host's cgroup layout; detected from /sys/fs/cgroup when nil.
	Cgroups *cgroups.FS
	// Runner runs the commands; real child processes when nil.
	Runner Runner
	// StopTimeout bounds how long Destroy waits for a killed sandbox to stop.
	StopTimeout time.Duration
	// Logger receives one debug line per command and info on create/destroy.
	Logger *slog.Logger
}

// Driver is a runtime.Runtime over an OCI runtime binary.
type Driver struct {
	cfg    Config
	cg     *cgroups.FS
	run    Runner
	log    *slog.Logger
	prefix []string // argv up to the subcommand
	nofile uint64   // RLIMIT_NOFILE of every sandbox
}

var _ runtime.Runtime = (*Driver)(nil)

// New builds a Driver. It does not check that the binary works; call
// Available first for a clear ErrUnavailable.
func New(cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = DefaultBinary
	}
	if cfg.Name == "" {
		cfg.Name = filepath.Base(cfg.Binary)
	}
	if cfg.Root == "" {
		cfg.Root = filepath.Join("/run/wrenn", cfg.Name)
	}
	if !filepath.IsAbs(cfg.Root) {
		return nil, fmt.Errorf("%s state root %q is not an absolute path", cfg.Name, cfg.Root)
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent
	}
	if !strings.HasPrefix(cfg.CgroupParent, "/") {
		return nil, fmt.Errorf("cgroup parent %q must start with /", cfg.CgroupParent)
	}
	if cfg.PidsOverhead < 0 || cfg.PidsPerTask < 0 || cfg.HostPidsCap < 0 {
		return nil, fmt.Errorf("pids overhead %d, pids per task %d or host pids cap %d is negative",
			cfg.PidsOverhead, cfg.PidsPerTask, cfg.HostPidsCap)
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	d := &Driver{cfg: cfg, cg: cfg.Cgroups, run: cfg.Runner, log: cfg.Logger.With("runtime", cfg.Name)}
	if d.run == nil {
		d.run = ExecRunner{}
	}
	if d.cg == nil {
		cg, err := cgroups.Open(cgroups.DefaultRoot)
		if err != nil {
			return nil, fmt.Errorf("%w: detect cgroups: %w", runtime.ErrUnavailable, err)
		}
		d.cg = cg
	}
	if d.nofile = grantableNofile(DefaultNofile); d.nofile < DefaultNofile {
		d.log.Warn("this process cannot raise RLIMIT_NOFILE (no CAP_SYS_RESOURCE); sandboxes get the agent's hard limit",
			"nofile", d.nofile, "wanted", DefaultNofile)
	}
	d.prefix = append(slices.Clone(cfg.Wrap), cfg.Binary, "--root", cfg.Root)
	d.prefix = append(d.prefix, cfg.GlobalArgs...)
	return d, nil
}

// Available reports whether binary can run here: found and answering
// --version, and for runsc the tools of its network workaround
// (RunscHideNetSysctls) present too. The error wraps runtime.ErrUnavailable
// and says what to install.
func Available(binary string) error {
	if filepath.Base(binary) == RunscName {
		if err := wrapperAvailable(binary); err != nil {
			return err
		}
	}
	path, err := exec.LookPath(binary)
	if err != nil {
		return fmt.Errorf("%w: %s not found (install the Debian package %q or set WRENN_RUNTIME to another runtime): %w",
			runtime.ErrUnavailable, binary, filepath.Base(binary), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s --version failed: %w: %s", runtime.ErrUnavailable, path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Name implements runtime.Runtime.
func (d *Driver) Name() string { return d.cfg.Name }

// Root is the runtime's state directory, where a sandbox that exists has a
// directory of its id (runc's layout).
func (d *Driver) Root() string { return d.cfg.Root }

// CgroupPath is the sandbox's cgroup path in every hierarchy.
func (d *Driver) CgroupPath(id string) string { return cgroupPath(d.cfg.CgroupParent, id) }

// Cgroups is the host cgroup layout the driver reads and cleans.
func (d *Driver) Cgroups() *cgroups.FS { return d.cg }

// validID keeps ids to what runc accepts and what is safe as a path element
// (cgroup and state directories are named after it).
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func checkID(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("invalid sandbox id %q: want letters, digits, '.', '_' or '-'", id)
	}
	return nil
}

// exec runs one subcommand and logs it.
func (d *Driver) exec(ctx context.Context, id, outputFile string, args ...string) ([]byte, error) {
	argv := append(slices.Clone(d.prefix), args...)
	start := time.Now()
	out, err := d.run.Run(ctx, Cmd{Args: argv, OutputFile: outputFile})
	d.log.LogAttrs(ctx, slog.LevelDebug, "runtime command",
		slog.String("sandbox_id", id), slog.Any("args", args),
		slog.Duration("took", time.Since(start)), slog.Bool("ok", err == nil))
	return out, err
}

// bundleFiles are the files Create keeps in spec.StateDir.
const (
	configFile  = "config.json"
	runtimeLog  = "runtime.log" // the runtime's own log, JSON lines
	initLog     = "init.log"    // the init's stdout and stderr
	pidFileName = "init.pid"
)

// Create implements runtime.Runtime: bundle, create, start, and a check that
// the init is running. On any failure it kills and deletes what it made, so
// the runtime and the cgroups hold nothing of the sandbox.
func (d *Driver) Create(ctx context.Context, s runtime.Spec) (err error) {
	if err := checkID(s.ID); err != nil {
		return err
	}
	if s.StateDir == "" || !filepath.IsAbs(s.StateDir) {
		return fmt.Errorf("create sandbox %s: state directory %q is not an absolute path", s.ID, s.StateDir)
	}
	if fi, err := os.Stat(s.RootFS); err != nil {
		return fmt.Errorf("create sandbox %s: root filesystem: %w", s.ID, err)
	} else if !fi.IsDir() {
		return fmt.Errorf("create sandbox %s: root filesystem %s is not a directory", s.ID, s.RootFS)
	}
	// An id the runtime already has must not reach the failure cleanup
	// below, which would destroy the running sandbox.
	if exists, err := d.has(ctx, s.ID); err != nil {
		return fmt.Errorf("create sandbox %s: %w", s.ID, err)
	} else if exists {
		return fmt.Errorf("create sandbox %s: it already exists in %s", s.ID, d.cfg.Name)
	}
	spec, err := d.sandboxSpec(s)
	if err != nil {
		return fmt.Errorf("create sandbox %s: %w", s.ID, err)
	}
	data, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return fmt.Errorf("create sandbox %s: encode OCI config: %w", s.ID, err)
	}
	if err := os.WriteFile(filepath.Join(s.StateDir, configFile), data, 0o600); err != nil {
		return fmt.Errorf("create sandbox %s: write OCI config: %w", s.ID, err)
	}

	start := time.Now()
	logPath := filepath.Join(s.StateDir, runtimeLog)
	logArgs := []string{"--log", logPath, "--log-format", "json"}
	defer func() {
		if err == nil {
			return
		}
		// The caller's context may be what failed; clean up regardless.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.StopTimeout+20*time.Second)
		defer cancel()
		if cerr := d.Destroy(cctx, s.ID); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up failed sandbox %s: %w", s.ID, cerr))
		}
	}()

	if d.delegates() {
		if err := d.makeUserCgroups(s.ID); err != nil {
			return fmt.Errorf("create sandbox %s: %w", s.ID, err)
		}
	}
	// One `run --detach` does what create + start do, in one process: every
	// runtime command is a fork and exec of a large Go binary (about 5 ms of
	// CPU here), which is most of a create's cost and what concurrent
	// creates queue for.
	pidFile := filepath.Join(s.StateDir, pidFileName)
	args := append(slices.Clone(logArgs), "run", "--detach", "--bundle", s.StateDir, "--pid-file", pidFile, s.ID)
	if _, err := d.exec(ctx, s.ID, filepath.Join(s.StateDir, initLog), args...); err != nil {
		return fmt.Errorf("start sandbox %s: %w", s.ID, withLog(err, logPath))
	}
	// The pid file is written before run returns; an init that is already
	// gone (a bad entrypoint) fails here instead of in the caller's wait
	// for a service that will never answer. Only that path pays for a
	// `state` command, for the runtime's own word on the status.
	pid, alive := initAlive(pidFile)
	if !alive {
		status := "gone"
		if st, err := d.state(ctx, s.ID); err == nil {
			status = st.Status
		}
		return fmt.Errorf("start sandbox %s: init is %s right after start; its output ends: %q",
			s.ID, status, logTail(filepath.Join(s.StateDir, initLog), 512))
	}
	d.log.LogAttrs(ctx, slog.LevelInfo, "sandbox created", slog.String("sandbox_id", s.ID),
		slog.Int("pid", pid), slog.Duration("took", time.Since(start)))
	return nil
}

// has reports whether the runtime holds a container named id. runc keeps a
// directory per container under its root and gVisor's runsc a
// "<id>_sandbox:<sandbox id>.state" file; either is a stat, not a command.
// A root that does not exist yet holds nothing.
func (d *Driver) has(ctx context.Context, id string) (bool, error) {
	if _, err := os.Lstat(filepath.Join(d.cfg.Root, id)); err == nil {
		return true, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("look for %s in %s: %w", id, d.cfg.Root, err)
	}
	// checkID admits no pattern characters, so id matches only itself.
	matches, err := filepath.Glob(filepath.Join(d.cfg.Root, id+"_sandbox:*.state"))
	if err != nil {
		return false, fmt.Errorf("look for %s in %s: %w", id, d.cfg.Root, err)
	}
	return len(matches) > 0, nil
}

// logTail is the last n bytes of the file at path, for an error message
// that must outlive the file (the failed sandbox's directory goes with it).
func logTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(unreadable: %v)", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		_, _ = f.Seek(fi.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, n))
	return strings.TrimSpace(string(b))
}

// initAlive reads the pid the runtime wrote and reports whether that
// process exists and is not a zombie.
func initAlive(pidFile string) (int, bool) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return pid, false
	}
	// The state is the first field after the command's closing parenthesis.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) {
		return pid, false
	}
	switch stat[i+2] {
	case 'Z', 'X', 'x':
		return pid, false
	}
	return pid, true
}

// withLog adds the runtime's last logged error (runc writes its reasons to
// --log, not to the stderr we keep for create) to err.
func withLog(err error, logPath string) error {
	b, rerr := os.ReadFile(logPath)
	if rerr != nil {
		return err
	}
	var last string
	for _, line := range strings.Split(string(b), "\n") {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && (entry.Level == "error" || entry.Level == "fatal") {
			last = entry.Msg
		}
	}
	if last == "" {
		return err
	}
	return fmt.Errorf("%s: %w", last, err)
}

// containerState is the part of `runc state` output the driver reads.
type containerState struct {
	ID     string `json:"id"`
	Pid    int    `json:"pid"`
	Status string `json:"status"`
}

// state runs `state <id>`; ErrNotFound when the runtime does not list id.
func (d *Driver) state(ctx context.Context, id string) (containerState, error) {
	out, err := d.exec(ctx, id, "", "state", id)
	if err != nil {
		return containerState{}, d.notFoundOr(ctx, id, fmt.Errorf("query state: %w", err))
	}
	var st containerState
	if err := json.Unmarshal(out, &st); err != nil {
		return containerState{}, fmt.Errorf("parse state of %s: %w", id, err)
	}
	return st, nil
}

// notFoundOr tells a failed command on an id the runtime does not have
// (ErrNotFound) from a real failure (err), by listing rather than by reading
// the binary's error text.
func (d *Driver) notFoundOr(ctx context.Context, id string, err error) error {
	ids, lerr := d.List(ctx)
	if lerr != nil {
		return errors.Join(err, lerr)
	}
	if !slices.Contains(ids, id) {
		return fmt.Errorf("sandbox %s: %w", id, runtime.ErrNotFound)
	}
	return err
}

// State implements runtime.Runtime. A container that was created but never
// started (an agent that died mid-Create) reports StateStopped: its init
// never ran and only Destroy applies.
func (d *Driver) State(ctx context.Context, id string) (runtime.State, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	st, err := d.state(ctx, id)
	if err != nil {
		return "", err
	}
	if rs, ok := stateOf(st.Status); ok {
		return rs, nil
	}
	return "", fmt.Errorf("sandbox %s: unknown runtime status %q", id, st.Status)
}

// stateOf maps the binary's status word to a runtime.State.
func stateOf(status string) (runtime.State, bool) {
	switch status {
	case "running":
		return runtime.StateRunning, true
	case "paused", "pausing":
		return runtime.StatePaused, true
	case "stopped", "created":
		return runtime.StateStopped, true
	}
	return "", false
}

// States reports the state of every sandbox under the state root from one
// `list`, so a health check of N sandboxes runs one runtime process instead
// of N. An id missing from the map is not in the runtime; a status the
// driver does not know is reported as the binary spelled it.
func (d *Driver) States(ctx context.Context) (map[string]runtime.State, error) {
	cs, err := d.list(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]runtime.State, len(cs))
	for _, c := range cs {
		st, ok := stateOf(c.Status)
		if !ok {
			st = runtime.State(c.Status)
		}
		out[c.ID] = st
	}
	return out, nil
}

// Pause implements runtime.Runtime with the cgroup freezer.
func (d *Driver) Pause(ctx context.Context, id string) error {
	return d.simple(ctx, id, "pause")
}

// Resume implements runtime.Runtime.
func (d *Driver) Resume(ctx context.Context, id string) error {
	return d.simple(ctx, id, "resume")
}

func (d *Driver) simple(ctx context.Context, id, verb string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if _, err := d.exec(ctx, id, "", verb, id); err != nil {
		return d.notFoundOr(ctx, id, fmt.Errorf("%s sandbox %s: %w", verb, id, err))
	}
	return nil
}

// Destroy implements runtime.Runtime: SIGKILL to every process (thawing a
// paused sandbox so they can die), wait until stopped, delete, then remove
// whatever cgroup directories of the id remain in any hierarchy. Unknown ids
// still get the cgroup sweep, so leftovers of a crashed agent go too.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	start := time.Now()
	st, err := d.state(ctx, id)
	existed := err == nil
	switch {
	case errors.Is(err, runtime.ErrNotFound):
	case err != nil:
		return fmt.Errorf("destroy sandbox %s: %w", id, err)
	default:
		if st.Status == "paused" && d.cfg.ResumeBeforeKill {
			// A failure means it already changed state; the wait below
			// decides.
			if _, rerr := d.exec(ctx, id, "", "resume", id); rerr != nil {
				d.log.LogAttrs(ctx, slog.LevelDebug, "resume before kill failed", slog.String("sandbox_id", id), slog.Any("error", rerr))
			}
		}
		if st.Status != "stopped" {
			// A failure here usually means it stopped meanwhile; the wait
			// below decides.
			if _, kerr := d.exec(ctx, id, "", "kill", "--all", id, "KILL"); kerr != nil {
				d.log.LogAttrs(ctx, slog.LevelDebug, "kill failed", slog.String("sandbox_id", id), slog.Any("error", kerr))
			}
			if err := d.waitStopped(ctx, id); err != nil {
				return fmt.Errorf("destroy sandbox %s: %w", id, err)
			}
		}
		if _, err := d.exec(ctx, id, "", "delete", "--force", id); err != nil {
			if nerr := d.notFoundOr(ctx, id, err); !errors.Is(nerr, runtime.ErrNotFound) {
				return fmt.Errorf("destroy sandbox %s: %w", id, nerr)
			}
		}
	}
	if err := d.cg.Remove(d.CgroupPath(id)); err != nil {
		return fmt.Errorf("destroy sandbox %s: %w", id, err)
	}
	if existed {
		d.log.LogAttrs(ctx, slog.LevelInfo, "sandbox destroyed", slog.String("sandbox_id", id),
			slog.Duration("took", time.Since(start)))
	}
	return nil
}

// waitStopped polls until the sandbox's init is gone.
func (d *Driver) waitStopped(ctx context.Context, id string) error {
	deadline := time.Now().Add(d.cfg.StopTimeout)
	for {
		st, err := d.state(ctx, id)
		if errors.Is(err, runtime.ErrNotFound) || (err == nil && st.Status == "stopped") {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("not stopped %s after SIGKILL: %w", d.cfg.StopTimeout, err)
			}
			return fmt.Errorf("still %s %s after SIGKILL", st.Status, d.cfg.StopTimeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for stop: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Stats implements runtime.Runtime from the sandbox's cgroup files.
func (d *Driver) Stats(ctx context.Context, id string) (runtime.Stats, error) {
	if err := checkID(id); err != nil {
		return runtime.Stats{}, err
	}
	st, err := d.cg.Stats(d.CgroupPath(id))
	if errors.Is(err, cgroups.ErrNotExist) {
		return runtime.Stats{}, fmt.Errorf("stats of sandbox %s: %w", id, runtime.ErrNotFound)
	}
	if err != nil {
		return runtime.Stats{}, fmt.Errorf("stats of sandbox %s: %w", id, err)
	}
	return runtime.Stats{CPUUsage: st.CPUUsage, MemoryBytes: st.MemoryBytes, Pids: st.Pids}, nil
}

// List implements runtime.Runtime: every container under the driver's state
// root, sorted.
func (d *Driver) List(ctx context.Context) ([]string, error) {
	cs, err := d.list(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(cs))
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	slices.Sort(ids)
	return ids, nil
}

// list runs `list --format json`.
func (d *Driver) list(ctx context.Context) ([]containerState, error) {
	out, err := d.exec(ctx, "", "", "list", "--format", "json")
	if err != nil {
		return nil, fmt.Errorf("list %s containers: %w", d.cfg.Name, err)
	}
	var cs []containerState // runc prints null when there are none
	if err := json.Unmarshal(out, &cs); err != nil {
		return nil, fmt.Errorf("parse %s container list: %w", d.cfg.Name, err)
	}
	return cs, nil
}
