package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/network"
	"github.com/wrenn/wrenn/internal/runtime"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/proto/envd/process"
	"github.com/wrenn/wrenn/proto/envd/process/processconnect"
)

// journal records, in order, every resource a fake took or released, so
// tests can check exactly what a failed create gave back and in which order.
type journal struct {
	mu      sync.Mutex
	entries []string
}

func (j *journal) add(format string, args ...any) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, fmt.Sprintf(format, args...))
}

func (j *journal) since(n int) []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.entries[n:])
}

func (j *journal) len() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.entries)
}

// failer makes one named step fail on demand.
type failer struct {
	mu    sync.Mutex
	steps map[string]error
}

func (f *failer) set(step string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.steps == nil {
		f.steps = map[string]error{}
	}
	if err == nil {
		delete(f.steps, step)
		return
	}
	f.steps[step] = err
}

func (f *failer) err(step string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.steps[step]
}

var errInjected = errors.New("injected failure")

// fakeRuntime keeps containers in a map and checks the Runtime contract
// that the agent serialises operations on one id.
type fakeRuntime struct {
	j    *journal
	fail *failer
	// delay widens race windows in concurrency tests.
	delay time.Duration

	mu         sync.Mutex
	containers map[string]runtime.State
	inflight   map[string]int
	overlaps   int
}

func newFakeRuntime(j *journal, f *failer) *fakeRuntime {
	return &fakeRuntime{j: j, fail: f, containers: map[string]runtime.State{}, inflight: map[string]int{}}
}

func (r *fakeRuntime) enter(id string) func() {
	r.mu.Lock()
	r.inflight[id]++
	if r.inflight[id] > 1 {
		r.overlaps++
	}
	r.mu.Unlock()
	if r.delay > 0 {
		time.Sleep(r.delay)
	}
	return func() {
		r.mu.Lock()
		r.inflight[id]--
		r.mu.Unlock()
	}
}

func (r *fakeRuntime) Name() string { return "fake" }

func (r *fakeRuntime) Create(_ context.Context, s runtime.Spec) error {
	defer r.enter(s.ID)()
	if err := r.fail.err("runtime.create"); err != nil {
		return err
	}
	if s.RootFS == "" || s.NetNSPath == "" {
		return errors.New("spec lacks rootfs or netns")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.containers[s.ID]; ok {
		return fmt.Errorf("container %s exists", s.ID)
	}
	r.containers[s.ID] = runtime.StateRunning
	r.j.add("runtime.create %s", s.ID)
	return nil
}

func (r *fakeRuntime) transition(id, step string, from, to runtime.State) error {
	defer r.enter(id)()
	if err := r.fail.err(step); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.containers[id]
	if !ok {
		return fmt.Errorf("%s %s: %w", step, id, runtime.ErrNotFound)
	}
	if st != from {
		return fmt.Errorf("%s %s: container is %s", step, id, st)
	}
	r.containers[id] = to
	r.j.add("%s %s", step, id)
	return nil
}

func (r *fakeRuntime) Pause(_ context.Context, id string) error {
	return r.transition(id, "runtime.pause", runtime.StateRunning, runtime.StatePaused)
}

func (r *fakeRuntime) Resume(_ context.Context, id string) error {
	return r.transition(id, "runtime.resume", runtime.StatePaused, runtime.StateRunning)
}

func (r *fakeRuntime) Destroy(_ context.Context, id string) error {
	defer r.enter(id)()
	if err := r.fail.err("runtime.destroy"); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.containers[id]; ok {
		delete(r.containers, id)
		r.j.add("runtime.destroy %s", id)
	}
	return nil
}

func (r *fakeRuntime) State(_ context.Context, id string) (runtime.State, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.containers[id]
	if !ok {
		return "", fmt.Errorf("state %s: %w", id, runtime.ErrNotFound)
	}
	return st, nil
}

func (r *fakeRuntime) Stats(context.Context, string) (runtime.Stats, error) {
	return runtime.Stats{}, nil
}

func (r *fakeRuntime) List(context.Context) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for id := range r.containers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}

// kill makes a container's init exit on its own.
func (r *fakeRuntime) kill(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.containers[id] = runtime.StateStopped
}

func (r *fakeRuntime) state(id string) (runtime.State, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.containers[id]
	return st, ok
}

// fakeNetwork hands out links whose guest addresses route to the fake envd.
type fakeNetwork struct {
	j    *journal
	fail *failer

	mu   sync.Mutex
	next int
	live map[string]*network.Link
}

func newFakeNetwork(j *journal, f *failer) *fakeNetwork {
	return &fakeNetwork{j: j, fail: f, live: map[string]*network.Link{}}
}

func (n *fakeNetwork) Setup(_ context.Context, sandboxID string, allowInternet bool) (*network.Link, error) {
	if err := n.fail.err("network.setup"); err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.live[sandboxID]; ok {
		return nil, fmt.Errorf("network of %s exists", sandboxID)
	}
	n.next++
	l := &network.Link{
		SandboxID: sandboxID, NetNSName: "wrenn-" + sandboxID, NetNSPath: "/var/run/netns/wrenn-" + sandboxID,
		HostIP: net.IPv4(10, 250, byte(n.next>>8), byte(n.next)), GuestIP: net.IPv4(10, 251, byte(n.next>>8), byte(n.next)),
		AllowInternet: allowInternet,
	}
	n.live[sandboxID] = l
	n.j.add("network.setup %s", sandboxID)
	return l, nil
}

func (n *fakeNetwork) EgressReady(_ context.Context, l *network.Link) error {
	if err := n.fail.err("network.egress"); err != nil {
		return err
	}
	n.j.add("network.egress %s", l.SandboxID)
	return nil
}

func (n *fakeNetwork) Teardown(_ context.Context, l *network.Link) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.live[l.SandboxID]; !ok {
		return fmt.Errorf("teardown of %s: not set up (double release?)", l.SandboxID)
	}
	delete(n.live, l.SandboxID)
	n.j.add("network.teardown %s", l.SandboxID)
	return nil
}

func (n *fakeNetwork) Adopt(_ context.Context, l *network.Link) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.live[l.SandboxID]; !ok {
		return fmt.Errorf("adopt %s: no such network", l.SandboxID)
	}
	return nil
}

func (n *fakeNetwork) CleanupOrphans(_ context.Context, keep map[string]bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for id := range n.live {
		if !keep[id] {
			delete(n.live, id)
			n.j.add("network.orphan %s", id)
		}
	}
	return nil
}

func (n *fakeNetwork) count() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.live)
}

// fakeImages mounts nothing; it tracks which root filesystems are taken.
type fakeImages struct {
	j    *journal
	fail *failer

	mu   sync.Mutex
	live map[string]bool
}

func newFakeImages(j *journal, f *failer) *fakeImages {
	return &fakeImages{j: j, fail: f, live: map[string]bool{}}
}

func (im *fakeImages) Exists(template string) bool { return template == "minimal" }

type fakeRootFS struct {
	im        *fakeImages
	sandboxID string
	dir       string
}

func (r *fakeRootFS) Path() string { return filepath.Join(r.dir, "rootfs") }

func (r *fakeRootFS) Release(context.Context) error {
	r.im.mu.Lock()
	defer r.im.mu.Unlock()
	if !r.im.live[r.sandboxID] {
		return fmt.Errorf("release rootfs of %s: not prepared (double release?)", r.sandboxID)
	}
	delete(r.im.live, r.sandboxID)
	r.im.j.add("rootfs.release %s", r.sandboxID)
	return nil
}

func (im *fakeImages) Prepare(_ context.Context, sandboxID, template string, _ uint64, dir string) (RootFS, error) {
	if err := im.fail.err("rootfs.prepare"); err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("sandbox dir: %w", err)
	}
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.live[sandboxID] {
		return nil, fmt.Errorf("rootfs of %s exists", sandboxID)
	}
	im.live[sandboxID] = true
	im.j.add("rootfs.prepare %s", sandboxID)
	return &fakeRootFS{im: im, sandboxID: sandboxID, dir: dir}, nil
}

func (im *fakeImages) Adopt(_ context.Context, sandboxID, _, dir string) (RootFS, error) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if !im.live[sandboxID] {
		return nil, fmt.Errorf("adopt rootfs of %s: not mounted", sandboxID)
	}
	return &fakeRootFS{im: im, sandboxID: sandboxID, dir: dir}, nil
}

func (im *fakeImages) CleanupOrphans(_ context.Context, keep map[string]bool) error {
	im.mu.Lock()
	defer im.mu.Unlock()
	for id := range im.live {
		if !keep[id] {
			delete(im.live, id)
			im.j.add("rootfs.orphan %s", id)
		}
	}
	return nil
}

func (im *fakeImages) count() int {
	im.mu.Lock()
	defer im.mu.Unlock()
	return len(im.live)
}

// fakeEnvd answers /health, /init and process.Start for every sandbox; the
// sandbox is told apart by the guest address in the request's Host.
type fakeEnvd struct {
	fail *failer
	srv  *httptest.Server

	mu    sync.Mutex
	inits map[string]int // guest host:port -> /init calls
}

func newFakeEnvd(t *testing.T, f *failer) *fakeEnvd {
	t.Helper()
	e := &fakeEnvd{fail: f, inits: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("POST /init", func(w http.ResponseWriter, r *http.Request) {
		if e.fail.err("envd.init") != nil {
			http.Error(w, "init refused", http.StatusInternalServerError)
			return
		}
		e.mu.Lock()
		e.inits[r.Host]++
		e.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	path, h := processconnect.NewProcessHandler(echoProcess{})
	mux.Handle(path, h)
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	return e
}

// transport routes every guest address to the fake envd.
func (e *fakeEnvd) transport(t *testing.T) *http.Transport {
	addr := e.srv.Listener.Addr().String()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func (e *fakeEnvd) initCount(guest net.IP) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.inits[net.JoinHostPort(guest.String(), "49983")]
}

// echoProcess's Start prints its command and arguments and exits 0.
type echoProcess struct {
	processconnect.UnimplementedProcessHandler
}

func (echoProcess) Start(_ context.Context, req *connect.Request[process.StartRequest], stream *connect.ServerStream[process.StartResponse]) error {
	out := req.Msg.GetProcess().GetCmd()
	for _, a := range req.Msg.GetProcess().GetArgs() {
		out += " " + a
	}
	events := []*process.ProcessEvent{
		{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: 7}}},
		{Event: &process.ProcessEvent_Data{Data: &process.ProcessEvent_DataEvent{Output: &process.ProcessEvent_DataEvent_Stdout{Stdout: []byte(out)}}}},
		{Event: &process.ProcessEvent_End{End: &process.ProcessEvent_EndEvent{Exited: true}}},
	}
	for _, ev := range events {
		if err := stream.Send(&process.StartResponse{Event: ev}); err != nil {
			return err
		}
	}
	return nil
}

// fakeClock moves only when the test advances it.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []clockWaiter
}

type clockWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, clockWaiter{at: c.now.Add(d), ch: ch})
	return ch
}

// advance moves the clock and fires the waiters that are due.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

// waitForWaiter blocks until someone waits on the clock: for the manager's
// loop, that means its previous sweep has finished.
func (c *fakeClock) waitForWaiter(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		n := len(c.waiters)
		c.mu.Unlock()
		if n > 0 {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("nothing waits on the clock: the manager's loop is stuck")
}

// recordingReporter is an in-process Reporter.
type recordingReporter struct {
	mu     sync.Mutex
	events []Event
}

func (r *recordingReporter) Report(_ context.Context, ev Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	return nil
}

func (r *recordingReporter) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// rig is a manager over fakes.
type rig struct {
	m      *Manager
	j      *journal
	fail   *failer
	rt     *fakeRuntime
	net    *fakeNetwork
	img    *fakeImages
	envd   *fakeEnvd
	clock  *fakeClock
	dir    string
	opts   Options
	report Reporter
}

func newRig(t *testing.T, reporter Reporter) *rig {
	t.Helper()
	r := &rig{j: &journal{}, fail: &failer{}, clock: newFakeClock(), dir: t.TempDir()}
	r.rt = newFakeRuntime(r.j, r.fail)
	r.net = newFakeNetwork(r.j, r.fail)
	r.img = newFakeImages(r.j, r.fail)
	r.envd = newFakeEnvd(t, r.fail)
	r.opts = Options{
		Dir: r.dir, Runtime: r.rt, Network: r.net, Images: r.img,
		EnvdTransport: r.envd.transport(t), DefaultDiskMB: 64,
		Logger: slog.New(slog.DiscardHandler), Clock: r.clock, Reporter: reporter,
		SweepInterval: time.Second, HealthInterval: time.Hour,
	}
	m, err := NewManager(r.opts)
	if err != nil {
		t.Fatal(err)
	}
	r.m = m
	return r
}

// run starts the manager's watch loop until the test ends.
func (r *rig) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.m.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func createReq(sandboxID string, timeout time.Duration) CreateRequest {
	return CreateRequest{
		ID: sandboxID, Template: "minimal", Timeout: timeout,
		Limits: Limits{VCPUs: 1, MemoryMB: 128},
	}
}

// assertEmpty checks that no fake holds anything and no directory is left.
func (r *rig) assertEmpty(t *testing.T) {
	t.Helper()
	ids, _ := r.rt.List(context.Background())
	if len(ids) != 0 || r.net.count() != 0 || r.img.count() != 0 {
		t.Errorf("leaked: runtime %v, networks %d, root filesystems %d", ids, r.net.count(), r.img.count())
	}
	entries, _ := os.ReadDir(r.dir)
	if len(entries) != 0 {
		t.Errorf("leaked %d sandbox directories", len(entries))
	}
	if l := r.m.List(); len(l) != 0 {
		t.Errorf("table still holds %v", l)
	}
}

func newID() string { return id.New(id.Sandbox) }
