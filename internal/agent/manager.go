package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wrenn/wrenn/internal/envdclient"
	"github.com/wrenn/wrenn/internal/network"
	"github.com/wrenn/wrenn/internal/runtime"
	"github.com/wrenn/wrenn/pkg/id"
)

// Network is what the manager needs from host networking.
type Network interface {
	// Setup may return before the sandbox's egress rule is in; the
	// sandbox is handed out only after EgressReady.
	Setup(ctx context.Context, sandboxID string, allowInternet bool) (*network.Link, error)
	EgressReady(ctx context.Context, link *network.Link) error
	Teardown(ctx context.Context, link *network.Link) error
	Adopt(ctx context.Context, link *network.Link) error
	CleanupOrphans(ctx context.Context, keep map[string]bool) error
}

// RootFS is a sandbox's mounted root filesystem as the manager sees it: a
// path to hand the runtime and a release for the sandbox's cleanup list.
type RootFS interface {
	Path() string
	Release(ctx context.Context) error
}

// Images is what the manager needs from the image store.
type Images interface {
	Exists(template string) bool
	Prepare(ctx context.Context, sandboxID, template string, diskBytes uint64, dir string) (RootFS, error)
	Adopt(ctx context.Context, sandboxID, template, dir string) (RootFS, error)
	CleanupOrphans(ctx context.Context, keep map[string]bool) error
}

// State is a sandbox's state in the agent's table.
type State string

// States of the agent's table. A sandbox is in the table from the moment its
// create starts until its destroy has released everything.
const (
	StateCreating   State = "creating"
	StateRunning    State = "running"
	StatePaused     State = "paused"
	StateDestroying State = "destroying"
)

// Limits of a sandbox, from the create request.
type Limits struct {
	VCPUs    uint32 `json:"vcpus"`
	MemoryMB uint32 `json:"memory_mb"`
	DiskMB   uint64 `json:"disk_mb"`
}

// Sandbox is one entry of the agent's table. State, Timeout and the release
// list change only under op; the other exported fields are fixed once create
// has finished. lastActive and busy are atomics so activity never waits for a
// lifecycle operation.
type Sandbox struct {
	ID            string            `json:"id"`
	Template      string            `json:"template"`
	Limits        Limits            `json:"limits"`
	Timeout       time.Duration     `json:"timeout"`
	AllowInternet bool              `json:"allow_internet"`
	Env           map[string]string `json:"env,omitempty"`
	Link          *network.Link     `json:"link"`
	Token         string            `json:"token"`
	StartedAt     time.Time         `json:"started_at"`
	State         State             `json:"state"`

	// op serialises lifecycle operations on this sandbox.
	op      sync.Mutex
	rootfs  RootFS
	envd    *envdclient.Client
	release cleanup

	// lastActive is the clock's time of the last activity, in Unix
	// nanoseconds; the inactivity sweep compares it with Timeout.
	lastActive atomic.Int64
	// busy counts RPCs in flight on the sandbox (an exec that outlasts the
	// timeout is activity, not idleness). It is raised under op so the sweep,
	// which holds op, sees a stable value.
	busy atomic.Int32
	// creating is set until the sandbox's create has finished, so pause and
	// resume refuse it at once instead of queueing behind the boot.
	creating atomic.Bool
}

// Options configures a Manager.
type Options struct {
	// Dir holds one directory per sandbox (state file, disk, runtime files).
	Dir           string
	Runtime       runtime.Runtime
	Network       Network
	Images        Images
	EnvdTransport http.RoundTripper
	DefaultDiskMB uint64
	// DNS servers written into sandboxes' resolv.conf.
	DNS    []string
	Logger *slog.Logger
	// Clock drives inactivity and timestamps; nil means the real clock.
	Clock Clock
	// Reporter receives sandbox events the agent initiates (auto-pause,
	// death); nil drops them (the control plane's host monitor still sees
	// the change in the next list).
	Reporter Reporter
	// SweepInterval is how often Run looks for idle sandboxes; 0 means 1 s.
	SweepInterval time.Duration
	// HealthInterval is how often Run asks the runtime whether each sandbox
	// still lives; 0 means 5 s.
	HealthInterval time.Duration
}

// Manager owns the sandboxes of this host. Its table is the truth about what
// runs here; each entry is persisted under Dir so a restarted agent re-adopts
// what it finds.
type Manager struct {
	o   Options
	log *slog.Logger

	mu        sync.Mutex
	sandboxes map[string]*Sandbox
	// autoPaused holds ids paused for inactivity since the last
	// TakeAutoPaused, in the order they were paused.
	autoPaused []string
	// onRemove is called with the id of every sandbox a destroy took out of
	// the table (caches keyed by sandbox, such as the port proxy's).
	onRemove []func(sandboxID string)
	// beforeStop is called with every sandbox about to be paused or
	// destroyed (see onBeforeStop).
	beforeStop []func(ctx context.Context, sb *Sandbox)

	// reports tracks event deliveries in flight; reportCtx ends them when
	// the manager stops.
	reports       sync.WaitGroup
	reportCtx     context.Context
	cancelReports context.CancelFunc
}

// NewManager returns a manager with an empty table; call Recover before
// serving.
func NewManager(o Options) (*Manager, error) {
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = time.Second
	}
	if o.HealthInterval <= 0 {
		o.HealthInterval = 5 * time.Second
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create sandboxes directory: %w", err)
	}
	m := &Manager{o: o, log: o.Logger, sandboxes: map[string]*Sandbox{}}
	m.reportCtx, m.cancelReports = context.WithCancel(context.Background())
	return m, nil
}

// CreateRequest asks for one sandbox.
type CreateRequest struct {
	ID            string
	Template      string
	Limits        Limits
	Timeout       time.Duration
	Env           map[string]string
	AllowInternet bool
}

const (
	minMemoryMB = 64
	maxVCPUs    = 64
	// pidsLimit caps tasks per sandbox: enough for real work, low enough
	// that a fork bomb stays inside.
	pidsLimit = 4096
	// bootTimeout bounds create from the runtime start to envd answering.
	bootTimeout = 30 * time.Second
	initPath    = "/usr/local/bin/wrenn-init"
)

func (r *CreateRequest) validate(m *Manager) error {
	switch {
	case !id.Valid(id.Sandbox, r.ID):
		return fmt.Errorf("%w: sandbox_id %q is not a sandbox id (sb- plus 20 base32 characters)", ErrInvalid, r.ID)
	case !m.o.Images.Exists(r.Template):
		return fmt.Errorf("%w: template %q does not exist on this host", ErrInvalid, r.Template)
	case r.Limits.VCPUs == 0 || r.Limits.VCPUs > maxVCPUs:
		return fmt.Errorf("%w: vcpus %d must be between 1 and %d", ErrInvalid, r.Limits.VCPUs, maxVCPUs)
	case r.Limits.MemoryMB < minMemoryMB:
		return fmt.Errorf("%w: memory_mb %d is below the %d MB minimum", ErrInvalid, r.Limits.MemoryMB, minMemoryMB)
	}
	for k := range r.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("%w: environment variable name %q is not valid", ErrInvalid, k)
		}
	}
	return nil
}

// Create boots a sandbox and returns once envd inside answers and is
// initialised. Creating an id that is already running returns it unchanged,
// so a retried RPC is harmless. On failure nothing of the sandbox is left.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (*Sandbox, error) {
	if req.Limits.DiskMB == 0 {
		req.Limits.DiskMB = m.o.DefaultDiskMB
	}
	if err := req.validate(m); err != nil {
		return nil, err
	}

	sb := &Sandbox{
		ID: req.ID, Template: req.Template, Limits: req.Limits, Timeout: req.Timeout,
		AllowInternet: req.AllowInternet, Env: req.Env, Token: id.Secret(32), State: StateCreating,
	}
	sb.creating.Store(true)
	sb.op.Lock()
	defer sb.op.Unlock()

	m.mu.Lock()
	if old, ok := m.sandboxes[req.ID]; ok {
		m.mu.Unlock()
		return m.existing(old)
	}
	m.sandboxes[req.ID] = sb
	m.mu.Unlock()

	log := m.log.With("sandbox_id", sb.ID)
	start := time.Now()
	defer sb.creating.Store(false)
	var steps bootSteps
	if err := m.boot(ctx, sb, &steps); err != nil {
		// Whoever waited on op sees a sandbox that is gone, not one
		// still being created.
		sb.State = StateDestroying
		if cerr := sb.release.run(ctx); cerr != nil {
			log.Error("release after failed create", "err", cerr)
		}
		m.mu.Lock()
		delete(m.sandboxes, sb.ID)
		m.mu.Unlock()
		return nil, err
	}
	log.Info("sandbox running", "template", sb.Template, "duration_ms", time.Since(start).Milliseconds(),
		"rootfs_ms", ms(steps.rootfs), "network_ms", ms(steps.network), "runtime_ms", ms(steps.runtime), "envd_ms", ms(steps.envd))
	return sb, nil
}

// existing answers a create for an id already in the table. It waits for any
// operation in flight on that id.
func (m *Manager) existing(sb *Sandbox) (*Sandbox, error) {
	sb.op.Lock()
	defer sb.op.Unlock()
	switch sb.State {
	case StateRunning, StatePaused:
		return sb, nil
	}
	return nil, fmt.Errorf("%w: sandbox %s is %s", ErrConflict, sb.ID, sb.State)
}

// bootSteps is how long each step of a create took, for the log: what a
// slow create spent its time on.
type bootSteps struct {
	rootfs, network, runtime, envd time.Duration
}

// ms is d in milliseconds with a fraction, for log fields.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// boot takes every resource of a sandbox in order, pushing each release onto
// sb.release as it goes.
func (m *Manager) boot(ctx context.Context, sb *Sandbox, steps *bootSteps) error {
	dir := m.sandboxDir(sb.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create sandbox directory: %w", err)
	}
	sb.release.add("remove sandbox directory", func(context.Context) error { return os.RemoveAll(dir) })

	// The root filesystem and the network depend on nothing of each other,
	// so they are taken at the same time. Their releases are pushed in a
	// fixed order once both are done, so the cleanup list is the same
	// whichever finished first, and one that succeeded is released when
	// the other failed.
	start := time.Now()
	var (
		rootfs          RootFS
		rootErr, netErr error
		link            *network.Link
		wg              sync.WaitGroup
	)
	wg.Go(func() {
		rootfs, rootErr = m.o.Images.Prepare(ctx, sb.ID, sb.Template, sb.Limits.DiskMB<<20, dir)
		steps.rootfs = time.Since(start)
	})
	link, netErr = m.o.Network.Setup(ctx, sb.ID, sb.AllowInternet)
	steps.network = time.Since(start)
	wg.Wait()
	if rootErr == nil {
		sb.rootfs = rootfs
		sb.release.add("release root filesystem", rootfs.Release)
	}
	if netErr == nil {
		sb.Link = link
		sb.release.add("tear down network", func(ctx context.Context) error { return m.o.Network.Teardown(ctx, link) })
	}
	if rootErr != nil {
		return errors.Join(fmt.Errorf("prepare root filesystem: %w", rootErr), wrapIf("set up network", netErr))
	}
	if netErr != nil {
		return fmt.Errorf("set up network: %w", netErr)
	}

	stateDir := filepath.Join(dir, "runtime")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("create runtime directory: %w", err)
	}
	spec := runtime.Spec{
		ID:        sb.ID,
		StateDir:  stateDir,
		RootFS:    rootfs.Path(),
		NetNSPath: link.NetNSPath,
		Hostname:  sb.ID,
		Args:      []string{initPath},
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"HOME=/root",
			"WRENN_HOSTNAME=" + sb.ID,
			"WRENN_DNS=" + strings.Join(m.o.DNS, ","),
		},
		VCPUs:    sb.Limits.VCPUs,
		MemoryMB: sb.Limits.MemoryMB,
		Pids:     pidsLimit,
	}
	// envd's /init is sent from before the runtime starts: the runtime's
	// command returns some milliseconds after the init runs, and envd may
	// listen by then. Until it does, connects to the sandbox's address are
	// refused and retried.
	sb.envd = envdclient.New(m.o.EnvdTransport, sb.Link.GuestIP, sb.Token)
	sb.release.add("close envd connections", func(context.Context) error { sb.envd.Close(); return nil })
	bootCtx, cancelBoot := context.WithTimeout(ctx, bootTimeout)
	defer cancelBoot()
	initDone := make(chan error, 1)
	go func() {
		initDone <- sb.envd.InitWhenUp(bootCtx, func() envdclient.InitRequest {
			return envdclient.InitRequest{AccessToken: sb.Token, EnvVars: sb.Env, Timestamp: m.o.Clock.Now().UTC()}
		})
	}()
	start = time.Now()
	if err := m.o.Runtime.Create(ctx, spec); err != nil {
		cancelBoot()
		<-initDone
		return fmt.Errorf("start sandbox in %s: %w", m.o.Runtime.Name(), err)
	}
	steps.runtime = time.Since(start)
	sb.release.add("destroy in runtime", func(ctx context.Context) error { return m.o.Runtime.Destroy(ctx, sb.ID) })

	start = time.Now()
	if err := m.o.Network.EgressReady(bootCtx, sb.Link); err != nil {
		cancelBoot()
		<-initDone
		return fmt.Errorf("set up network: %w", err)
	}
	if err := <-initDone; err != nil {
		return fmt.Errorf("sandbox did not come up: %w", err)
	}
	steps.envd = time.Since(start)
	sb.StartedAt = m.o.Clock.Now().UTC()
	sb.State = StateRunning
	m.touch(sb)
	return m.persist(sb)
}

// wrapIf wraps err with what was being done, or is nil.
func wrapIf(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Destroy stops a sandbox and releases everything it took.
func (m *Manager) Destroy(ctx context.Context, sandboxID string) error {
	sb, err := m.get(sandboxID)
	if err != nil {
		return err
	}
	sb.op.Lock()
	defer sb.op.Unlock()
	if sb.State == StateDestroying {
		// A concurrent destroy finished while we waited.
		return goneError(sandboxID)
	}
	return m.destroyLocked(ctx, sb)
}

// destroyLocked releases everything sb holds and drops it from the table;
// the caller holds sb.op and has checked that no destroy ran before. The
// entry leaves the table even when a release step fails: what is left is
// the start-up orphan cleanup's to find.
func (m *Manager) destroyLocked(ctx context.Context, sb *Sandbox) error {
	m.stopping(ctx, sb)
	sb.State = StateDestroying
	err := sb.release.run(ctx)
	m.mu.Lock()
	if m.sandboxes[sb.ID] == sb {
		delete(m.sandboxes, sb.ID)
	}
	hooks := m.onRemove
	m.mu.Unlock()
	for _, fn := range hooks {
		fn(sb.ID)
	}
	if err != nil {
		return fmt.Errorf("destroy sandbox %s: %w", sb.ID, err)
	}
	m.log.Info("sandbox destroyed", "sandbox_id", sb.ID)
	return nil
}

// OnRemove registers fn to be called with a sandbox's id after a destroy
// took it out of the table, on every destroy path (API, failed auto-pause,
// death). fn runs under the sandbox's lifecycle lock and must not block.
func (m *Manager) OnRemove(fn func(sandboxID string)) {
	m.mu.Lock()
	m.onRemove = append(m.onRemove, fn)
	m.mu.Unlock()
}

// onBeforeStop registers fn to be called with a sandbox just before it is
// paused or destroyed, on every path (API, auto-pause, death, shutdown),
// while it still has its cgroup and disk. fn runs under the sandbox's
// lifecycle lock, so it may read the sandbox's fields, and must not block:
// what it sends, it sends in the background.
func (m *Manager) onBeforeStop(fn func(ctx context.Context, sb *Sandbox)) {
	m.mu.Lock()
	m.beforeStop = append(m.beforeStop, fn)
	m.mu.Unlock()
}

// stopping runs the onBeforeStop hooks; the caller holds sb.op.
func (m *Manager) stopping(ctx context.Context, sb *Sandbox) {
	m.mu.Lock()
	hooks := m.beforeStop
	m.mu.Unlock()
	for _, fn := range hooks {
		fn(ctx, sb)
	}
}

// Get returns a sandbox of the table.
func (m *Manager) Get(sandboxID string) (*Sandbox, error) { return m.get(sandboxID) }

func (m *Manager) get(sandboxID string) (*Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb, ok := m.sandboxes[sandboxID]
	if !ok {
		return nil, goneError(sandboxID)
	}
	return sb, nil
}

// Snapshot is a copy of a table entry that is safe to read without locks.
type Snapshot struct {
	ID        string
	Template  string
	State     State
	Limits    Limits
	HostIP    net.IP
	GuestIP   net.IP
	StartedAt time.Time
}

// List returns the sandboxes of the table, ordered by id. Entries busy with
// an operation are reported with the state they had when it began.
func (m *Manager) List() []Snapshot {
	m.mu.Lock()
	all := make([]*Sandbox, 0, len(m.sandboxes))
	for _, sb := range m.sandboxes {
		all = append(all, sb)
	}
	m.mu.Unlock()
	out := make([]Snapshot, 0, len(all))
	for _, sb := range all {
		out = append(out, sb.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (sb *Sandbox) snapshot() Snapshot {
	s := Snapshot{ID: sb.ID, Template: sb.Template, State: sb.State, Limits: sb.Limits, StartedAt: sb.StartedAt}
	if sb.State != StateCreating && sb.Link != nil {
		s.HostIP, s.GuestIP = sb.Link.HostIP, sb.Link.GuestIP
	}
	return s
}

// Exec runs a command in a running sandbox and collects its output.
func (m *Manager) Exec(ctx context.Context, sandboxID string, req envdclient.ExecRequest) (*envdclient.ExecResult, error) {
	sb, err := m.get(sandboxID)
	if err != nil {
		return nil, err
	}
	// Exec does not hold sb.op for the command's whole run: commands and
	// lifecycle operations overlap, and a destroy ends the command's stream.
	if req.Cmd == "" {
		return nil, fmt.Errorf("%w: cmd is empty", ErrInvalid)
	}
	envd, done, err := m.begin(sb)
	if err != nil {
		return nil, err
	}
	defer done()
	return envd.Exec(ctx, req)
}

func (m *Manager) sandboxDir(sandboxID string) string { return filepath.Join(m.o.Dir, sandboxID) }

const stateFile = "sandbox.json"

// persist writes the sandbox's record atomically; it holds the access token,
// so it is readable by root only.
func (m *Manager) persist(sb *Sandbox) error {
	b, err := json.MarshalIndent(sb, "", "  ")
	if err != nil {
		return fmt.Errorf("encode sandbox record: %w", err)
	}
	path := filepath.Join(m.sandboxDir(sb.ID), stateFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write sandbox record: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write sandbox record: %w", err)
	}
	return nil
}

// DestroyAll destroys every sandbox of the table, for an agent told to leave
// nothing behind when it stops.
func (m *Manager) DestroyAll(ctx context.Context) error {
	var errs []error
	for _, s := range m.List() {
		if err := m.Destroy(ctx, s.ID); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
