package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

const testKey = "wrn_0123456789abcdef0123456789abcdef"

// fakeAPI implements the REST contract the CLI speaks, in memory. Sandboxes
// move one step (starting→running, stopping→stopped) each time they are read,
// so waiting loops are exercised.
type fakeAPI struct {
	mu        sync.Mutex
	sandboxes map[string]*Sandbox
	order     []string
	execs     []ExecRequest
	// execResult answers every exec.
	execResult ExecResult
	// failStart makes new sandboxes end in status error.
	failStart bool
	n         int
}

func newFakeAPI(t *testing.T) (*fakeAPI, *httptest.Server) {
	t.Helper()
	f := &fakeAPI{sandboxes: map[string]*Sandbox{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-API-Key") != testKey {
		writeErr(w, http.StatusUnauthorized, "unauthorized", "missing or invalid API key")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	path := strings.TrimPrefix(r.URL.Path, "/v1/sandboxes")
	id, action, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	switch {
	case r.Method == http.MethodPost && path == "":
		var req CreateSandboxRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeErr(w, http.StatusBadRequest, "invalid", "malformed JSON")
			return
		}
		if req.Template != "minimal" {
			writeErr(w, http.StatusBadRequest, "invalid", fmt.Sprintf("template: unknown template %q", req.Template))
			return
		}
		f.n++
		sb := &Sandbox{ID: fmt.Sprintf("sb-%020d", f.n), Template: req.Template, Status: StatusStarting,
			VCPUs: max(req.VCPUs, 1), MemoryMB: max(req.MemoryMB, 512), TimeoutSec: req.TimeoutSec,
			CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
		f.sandboxes[sb.ID] = sb
		f.order = append(f.order, sb.ID)
		writeJSON(w, http.StatusAccepted, sb)
	case r.Method == http.MethodGet && path == "":
		list := []Sandbox{}
		for _, id := range f.order {
			list = append(list, *f.sandboxes[id])
		}
		writeJSON(w, http.StatusOK, map[string]any{"sandboxes": list})
	case id != "" && f.sandboxes[id] == nil:
		writeErr(w, http.StatusNotFound, "not_found", fmt.Sprintf("sandbox %s not found", id))
	case r.Method == http.MethodGet && action == "":
		sb := f.sandboxes[id]
		out := *sb
		switch sb.Status {
		case StatusStarting:
			if f.failStart {
				sb.Status, sb.Error = StatusError, "runc create: boom"
			} else {
				sb.Status = StatusRunning
			}
		case StatusStopping:
			sb.Status = StatusStopped
		}
		writeJSON(w, http.StatusOK, out)
	case r.Method == http.MethodPost && action == "exec":
		var req ExecRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeErr(w, http.StatusBadRequest, "invalid", "malformed JSON")
			return
		}
		if f.sandboxes[id].Status != StatusRunning {
			writeErr(w, http.StatusConflict, "conflict", fmt.Sprintf("sandbox %s is %s, not running", id, f.sandboxes[id].Status))
			return
		}
		f.execs = append(f.execs, req)
		writeJSON(w, http.StatusOK, f.execResult)
	case r.Method == http.MethodDelete && action == "":
		f.sandboxes[id].Status = StatusStopping
		w.WriteHeader(http.StatusAccepted)
	default:
		writeErr(w, http.StatusNotFound, "not_found", "no such route")
	}
}

func (f *fakeAPI) add(status string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	sb := &Sandbox{ID: fmt.Sprintf("sb-%020d", f.n), Template: "minimal", Status: status, VCPUs: 2, MemoryMB: 1024,
		CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	f.sandboxes[sb.ID] = sb
	f.order = append(f.order, sb.ID)
	return sb.ID
}

func (f *fakeAPI) get(id string) Sandbox {
	f.mu.Lock()
	defer f.mu.Unlock()
	return *f.sandboxes[id]
}

func (f *fakeAPI) execLog() []ExecRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ExecRequest(nil), f.execs...)
}

func (f *fakeAPI) status(id string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sandboxes[id].Status
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, url string, args ...string) result {
	t.Helper()
	return runEnv(t, map[string]string{"WRENN_API_URL": url, "WRENN_API_KEY": testKey}, args...)
}

func runEnv(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	d := Deps{
		IO:  IO{Stdout: &out, Stderr: &errb},
		Env: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
		Now: func() time.Time { return time.Date(2026, 1, 2, 3, 9, 5, 0, time.UTC) },
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := Main(ctx, args, d)
	return result{code, out.String(), errb.String()}
}

func TestCreateWaitsUntilRunningAndPrintsID(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := run(t, srv.URL, "sandbox", "create", "--vcpus", "2", "--memory-mb", "1024")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	id := strings.TrimSpace(r.stdout)
	if !strings.HasPrefix(id, "sb-") || strings.Contains(id, "\n") {
		t.Fatalf("stdout %q, want one sandbox id", r.stdout)
	}
	if got := f.status(id); got != StatusRunning {
		t.Errorf("status after create --wait = %q, want running", got)
	}
	if sb := f.get(id); sb.VCPUs != 2 || sb.MemoryMB != 1024 {
		t.Errorf("sandbox created with %d vcpus, %d MiB; want 2, 1024", sb.VCPUs, sb.MemoryMB)
	}
}

func TestCreateNoWaitAndJSON(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := run(t, srv.URL, "--json", "sandbox", "create", "--wait=false")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	var sb Sandbox
	if err := json.Unmarshal([]byte(r.stdout), &sb); err != nil {
		t.Fatalf("stdout is not a sandbox JSON: %v\n%s", err, r.stdout)
	}
	if sb.Status != StatusStarting || f.status(sb.ID) != StatusStarting {
		t.Errorf("--wait=false polled: printed %q, server has %q; want starting both", sb.Status, f.status(sb.ID))
	}
}

func TestCreateFailsWhenSandboxErrors(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	f.failStart = true
	r := run(t, srv.URL, "sandbox", "create")
	if r.code != 1 || !strings.Contains(r.stderr, "runc create: boom") || !strings.HasPrefix(r.stderr, "error: ") {
		t.Errorf("exit %d stderr %q; want 1 and the sandbox's error", r.code, r.stderr)
	}
}

func TestAPIErrorsArePrintedAndExitOne(t *testing.T) {
	t.Parallel()
	_, srv := newFakeAPI(t)
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"unknown template", nil, []string{"sandbox", "create", "--template", "nope"}, `error: template: unknown template "nope"` + "\n"},
		{"unknown sandbox", nil, []string{"sandbox", "exec", "sb-missing", "--", "true"}, "error: sandbox sb-missing not found\n"},
		{"wrong key", map[string]string{"WRENN_API_URL": srv.URL, "WRENN_API_KEY": "wrn_ffffffffffffffffffffffffffffffff"}, []string{"sandbox", "list"}, "error: missing or invalid API key\n"},
		{"kill unknown", nil, []string{"sandbox", "kill", "sb-missing"}, "error: sandbox sb-missing not found\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := tt.env
			if env == nil {
				env = map[string]string{"WRENN_API_URL": srv.URL, "WRENN_API_KEY": testKey}
			}
			r := runEnv(t, env, tt.args...)
			if r.code != 1 || r.stderr != tt.want || r.stdout != "" {
				t.Errorf("exit %d stdout %q stderr %q; want 1, nothing, %q", r.code, r.stdout, r.stderr, tt.want)
			}
		})
	}
}

func TestMissingConfigurationSaysWhatToSet(t *testing.T) {
	t.Parallel()
	r := runEnv(t, map[string]string{}, "sandbox", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "WRENN_API_URL is not set") || !strings.Contains(r.stderr, "WRENN_API_KEY is not set") {
		t.Errorf("exit %d stderr %q; want both variables named", r.code, r.stderr)
	}
}

func TestListTable(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	a := f.add(StatusRunning)
	b := f.add(StatusStopped)
	r := run(t, srv.URL, "sandbox", "list")
	if r.code != 0 {
		t.Fatalf("exit %d stderr %q", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want header and 2 rows, got %q", r.stdout)
	}
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != "ID TEMPLATE STATUS VCPUS MEM CREATED" {
		t.Errorf("header %q", lines[0])
	}
	for i, want := range [][]string{{a, "minimal", "running", "2", "1024MiB", "5m", "ago"}, {b, "minimal", "stopped", "2", "1024MiB", "5m", "ago"}} {
		if got := strings.Fields(lines[i+1]); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("row %d = %q, want %q", i, got, want)
		}
	}
	r = run(t, srv.URL, "sandbox", "list", "--json")
	var list []Sandbox
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 2 || list[0].ID != a {
		t.Errorf("--json: %v %q", err, r.stdout)
	}
}

func TestExecPropagatesOutputAndExitCode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		words    []string
		res      ExecResult
		wantReq  ExecRequest
		wantCode int
	}{
		{"argv", []string{"echo", "hi"}, ExecResult{Stdout: "hi\n"}, ExecRequest{Cmd: "echo", Args: []string{"hi"}}, 0},
		{"shell line", []string{"echo hi >&2; exit 3"}, ExecResult{Stderr: "hi\n", ExitCode: 3}, ExecRequest{Cmd: "echo hi >&2; exit 3"}, 3},
		{"single word", []string{"true"}, ExecResult{}, ExecRequest{Cmd: "true"}, 0},
		{"timed out", []string{"sleep", "100"}, ExecResult{ExitCode: -1, TimedOut: true}, ExecRequest{Cmd: "sleep", Args: []string{"100"}}, 124},
		{"signal", []string{"kill", "-9", "$$"}, ExecResult{ExitCode: -1}, ExecRequest{Cmd: "kill", Args: []string{"-9", "$$"}}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, srv := newFakeAPI(t)
			f.execResult = tt.res
			id := f.add(StatusRunning)
			r := run(t, srv.URL, append([]string{"sandbox", "exec", id, "--"}, tt.words...)...)
			if r.code != tt.wantCode {
				t.Errorf("exit %d, want %d (stderr %q)", r.code, tt.wantCode, r.stderr)
			}
			if r.stdout != tt.res.Stdout || !strings.HasPrefix(r.stderr, tt.res.Stderr) {
				t.Errorf("stdout %q stderr %q; want %q, %q", r.stdout, r.stderr, tt.res.Stdout, tt.res.Stderr)
			}
			execs := f.execLog()
			if len(execs) != 1 {
				t.Fatalf("%d execs reached the API", len(execs))
			}
			got, _ := json.Marshal(execs[0])
			want, _ := json.Marshal(tt.wantReq)
			if string(got) != string(want) {
				t.Errorf("request %s, want %s", got, want)
			}
		})
	}
}

func TestExecOnStoppedSandboxIsAConflict(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	id := f.add(StatusStopped)
	r := run(t, srv.URL, "sandbox", "exec", id, "--", "true")
	if r.code != 1 || !strings.Contains(r.stderr, "not running") {
		t.Errorf("exit %d stderr %q", r.code, r.stderr)
	}
}

func TestExecEnvFlag(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	id := f.add(StatusRunning)
	if r := run(t, srv.URL, "sandbox", "exec", "-e", "A=1", "-e", "B=x=y", "--cwd", "/tmp", id, "--", "env"); r.code != 0 {
		t.Fatalf("exit %d stderr %q", r.code, r.stderr)
	}
	if got := f.execLog()[0]; got.Env["A"] != "1" || got.Env["B"] != "x=y" || got.Cwd != "/tmp" {
		t.Errorf("request %+v", got)
	}
	if r := run(t, srv.URL, "sandbox", "exec", "-e", "novalue", id, "--", "env"); r.code != 1 || !strings.Contains(r.stderr, "KEY=VALUE") {
		t.Errorf("bad --env: exit %d stderr %q", r.code, r.stderr)
	}
}

func TestKillWaitsUntilStopped(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	id := f.add(StatusRunning)
	r := run(t, srv.URL, "sandbox", "kill", id)
	if r.code != 0 || strings.TrimSpace(r.stdout) != id {
		t.Fatalf("exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if got := f.status(id); got != StatusStopped {
		t.Errorf("status after kill = %q, want stopped", got)
	}
	other := f.add(StatusRunning)
	if r := run(t, srv.URL, "sandbox", "kill", "--no-wait", other); r.code != 0 {
		t.Fatalf("--no-wait: exit %d stderr %q", r.code, r.stderr)
	}
	if got := f.status(other); got != StatusStopping {
		t.Errorf("status after kill --no-wait = %q, want stopping (no polling)", got)
	}
}

func TestConnectionRefusedHintsAtMakeRun(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	r := run(t, url, "sandbox", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "make run") {
		t.Errorf("exit %d stderr %q", r.code, r.stderr)
	}
}

func TestAge(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{{-time.Second, "just now"}, {42 * time.Second, "42s ago"}, {3 * time.Minute, "3m ago"}, {5 * time.Hour, "5h ago"}, {72 * time.Hour, "3d ago"}} {
		if got := age(now, now.Add(-tt.d)); got != tt.want {
			t.Errorf("age(%s) = %q, want %q", tt.d, got, tt.want)
		}
	}
	if got := age(now, time.Time{}); got != "-" {
		t.Errorf("age(zero) = %q", got)
	}
}
