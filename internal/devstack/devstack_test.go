package devstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn/wrenn/pkg/config"
)

func TestCredentialsCreatedOnceAndReused(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "dev", "credentials.json")
	first, created, err := LoadOrCreateCredentials(path)
	if err != nil || !created {
		t.Fatalf("first load: created=%v err=%v", created, err)
	}
	if !config.ValidAPIKey(first.APIKey) || len(first.PostgresPassword) != 32 || len(first.RedisPassword) != 32 || first.PostgresPassword == first.RedisPassword {
		t.Fatalf("generated credentials look wrong: %+v", first)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("credentials mode %v, want 0600", fi.Mode().Perm())
	}
	second, created, err := LoadOrCreateCredentials(path)
	if err != nil || created {
		t.Fatalf("second load: created=%v err=%v", created, err)
	}
	if second != first {
		t.Errorf("second load %+v differs from first %+v", second, first)
	}
	if a, b := ExportLines("http://127.0.0.1:8080", first.APIKey), ExportLines("http://127.0.0.1:8080", second.APIKey); a != b {
		t.Errorf("export lines differ across starts:\n%s\n%s", a, b)
	}
	want := "export WRENN_API_URL=http://127.0.0.1:8080\nexport WRENN_API_KEY=" + first.APIKey + "\n"
	if got := ExportLines("http://127.0.0.1:8080", first.APIKey); got != want {
		t.Errorf("ExportLines = %q, want %q", got, want)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temporary files left beside the credentials: %v", entries)
	}
}

func TestCredentialsRepairAndReject(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		content     string
		mode        os.FileMode
		wantErr     bool
		wantCreated bool
		wantKey     string
	}{
		{"missing field is filled, others kept", `{"postgres_password":"aa","redis_password":"bb"}`, 0o600, false, true, ""},
		{"wide mode is tightened", `{"postgres_password":"aa","redis_password":"bb","api_key":"wrn_0123456789abcdef0123456789abcdef"}`, 0o644, false, false, "wrn_0123456789abcdef0123456789abcdef"},
		{"garbage is an error", `{not json`, 0o600, true, false, ""},
		{"bad key is an error", `{"api_key":"secret"}`, 0o600, true, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "credentials.json")
			if err := os.WriteFile(path, []byte(tt.content), tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			c, created, err := LoadOrCreateCredentials(path)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr {
				if b, _ := os.ReadFile(path); string(b) != tt.content {
					t.Errorf("a rejected file was rewritten: %q", b)
				}
				return
			}
			if created != tt.wantCreated || c.PostgresPassword != "aa" || c.RedisPassword != "bb" {
				t.Errorf("created=%v creds=%+v", created, c)
			}
			if tt.wantKey != "" && c.APIKey != tt.wantKey {
				t.Errorf("key %q, want %q", c.APIKey, tt.wantKey)
			}
			if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", fi.Mode().Perm())
			}
			again, created, err := LoadOrCreateCredentials(path)
			if err != nil || created || again != c {
				t.Errorf("reload: %+v created=%v err=%v, want %+v", again, created, err, c)
			}
		})
	}
}

func TestLockIsExclusive(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "wrenn-dev.pid")
	l, err := AcquireLock(path)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Errorf("lock file holds %q, want our pid", b)
	}
	// flock locks belong to the open file description, so a second open in
	// the same process conflicts just like another process would.
	_, err = AcquireLock(path)
	if !errors.Is(err, ErrAlreadyRunning) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second acquire: %v, want ErrAlreadyRunning naming our pid", err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	l2, err := AcquireLock(path)
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	_ = l2.Release()
}

// fakeService records when it is stopped; it can fail to stop or end by
// itself.
type fakeService struct {
	name    string
	log     *eventLog
	stopErr error
	done    chan struct{}
	once    sync.Once
}

type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(e string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *eventLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

func newFake(name string, log *eventLog) *fakeService {
	return &fakeService{name: name, log: log, done: make(chan struct{})}
}

func (f *fakeService) Name() string          { return f.name }
func (f *fakeService) Done() <-chan struct{} { return f.done }
func (f *fakeService) Err() error            { return errors.New("exit status 2") }
func (f *fakeService) Tail() string          { return f.name + " last words" }
func (f *fakeService) die()                  { f.once.Do(func() { close(f.done) }) }
func (f *fakeService) Stop(ctx context.Context) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	f.log.add("stop " + f.name)
	f.die()
	return f.stopErr
}

func TestShutdownDrainsThenStopsInReverseOrder(t *testing.T) {
	t.Parallel()
	log := &eventLog{}
	var out bytes.Buffer
	st := &stack{stopTimeout: time.Second, say: func(f string, a ...any) { fmt.Fprintf(&out, f+"\n", a...) }}
	agent := newFake("host agent", log)
	agent.stopErr = errors.New("killed after 15s")
	for _, s := range []service{newFake("postgres", log), newFake("redis", log), newFake("control plane", log), agent} {
		st.add(s)
	}
	st.drain = func(ctx context.Context) error {
		log.add("drain")
		return errors.New("1 sandbox(es) not stopped")
	}
	err := st.shutdown(context.Background())
	want := []string{"drain", "stop host agent", "stop control plane", "stop redis", "stop postgres"}
	if got := log.list(); !reflect.DeepEqual(got, want) {
		t.Errorf("shutdown order %q, want %q", got, want)
	}
	// Failures along the way are reported, and do not stop the rest.
	if err == nil || !strings.Contains(err.Error(), "killed after 15s") || !strings.Contains(err.Error(), "not stopped") {
		t.Errorf("shutdown error %v, want both failures", err)
	}
	if err := st.shutdown(context.Background()); err == nil || len(log.list()) != len(want)+1 {
		// A second shutdown only drains again (the drain still fails) and
		// stops nothing twice.
		t.Errorf("second shutdown: err=%v events=%q", err, log.list())
	}
}

func TestShutdownWithoutControlPlaneSkipsDrain(t *testing.T) {
	t.Parallel()
	log := &eventLog{}
	st := &stack{stopTimeout: time.Second, say: func(string, ...any) {}}
	st.add(newFake("postgres", log))
	st.add(newFake("redis", log))
	if err := st.shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := log.list(), []string{"stop redis", "stop postgres"}; !reflect.DeepEqual(got, want) {
		t.Errorf("order %q, want %q", got, want)
	}
}

func TestWatchNamesTheChildThatDied(t *testing.T) {
	t.Parallel()
	log := &eventLog{}
	st := &stack{stopTimeout: time.Second, say: func(string, ...any) {}}
	cp, agent := newFake("control plane", log), newFake("host agent", log)
	st.add(cp)
	st.add(agent)
	go func() {
		time.Sleep(20 * time.Millisecond)
		agent.die()
	}()
	err := st.watch(context.Background())
	var ce *ChildExitedError
	if !errors.As(err, &ce) || ce.Name != "host agent" || ce.Tail != "host agent last words" {
		t.Fatalf("watch = %v, want the host agent named", err)
	}
	if !strings.Contains(err.Error(), "exit status 2") {
		t.Errorf("error %q does not carry the exit status", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	st2 := &stack{stopTimeout: time.Second, say: func(string, ...any) {}}
	st2.add(newFake("control plane", log))
	cancel()
	if err := st2.watch(ctx); err != nil {
		t.Errorf("watch after a requested stop = %v, want nil", err)
	}
}

func TestPrefixWriterSplitsLinesAndKeepsTail(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	con := &console{out: &out}
	w := newPrefixWriter(con, "[cp]", 2)
	for _, chunk := range []string{"one\ntw", "o\r\nthree", "\nfour"} {
		if _, err := w.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := out.String(), "[cp] one\n[cp] two\n[cp] three\n"; got != want {
		t.Errorf("console %q, want %q", got, want)
	}
	w.Flush()
	if got, want := w.Tail(), "three\nfour"; got != want {
		t.Errorf("tail %q, want %q", got, want)
	}
}

func TestMergeEnv(t *testing.T) {
	t.Parallel()
	base := []string{"PATH=/bin", "WRENN_REGISTRATION_TOKEN=stale", "LOG_LEVEL=debug", "WRENN_RUNTIME=runc"}
	got := mergeEnv(base, map[string]string{"LOG_LEVEL": "info", "WRENN_REGISTRATION_TOKEN": "", "WRENN_DIR": "/x"})
	slices.Sort(got)
	want := []string{"LOG_LEVEL=info", "PATH=/bin", "WRENN_DIR=/x", "WRENN_RUNTIME=runc"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mergeEnv = %q, want %q", got, want)
	}
	if !hasEnv(base, "WRENN_RUNTIME") || hasEnv(base, "WRENN_CACHE_DIR") {
		t.Error("hasEnv is wrong")
	}
}

func TestFindBinDir(t *testing.T) {
	t.Parallel()
	repo := t.TempDir()
	bin := filepath.Join(repo, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "wrenn-cp"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	elsewhere := t.TempDir()
	tests := []struct {
		name, exe, cwd, want string
	}{
		{"beside the executable", filepath.Join(bin, "wrenn"), elsewhere, bin},
		{"go run from the checkout", filepath.Join(elsewhere, "exe", "wrenn"), repo, bin},
		{"nowhere", filepath.Join(elsewhere, "wrenn"), elsewhere, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := FindBinDir(tt.exe, tt.cwd)
			if got != tt.want || (err != nil) != (tt.want == "") {
				t.Errorf("FindBinDir = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if got := ImageScriptFor(bin); got != filepath.Join(repo, "scripts", "build-image.sh") {
		t.Errorf("ImageScriptFor = %q", got)
	}
}
