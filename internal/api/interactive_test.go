package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wrenn/wrenn/internal/hostclient"
)

// wsDial opens a WebSocket on the API with key.
func wsDial(t *testing.T, srv *httptest.Server, path, key string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := "ws" + strings.TrimPrefix(srv.URL, "http") + path
	return websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"X-Api-Key": {key}}})
}

// wsRead reads one text message as JSON.
func wsRead(t *testing.T, c *websocket.Conn) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ != websocket.MessageText {
		t.Fatalf("binary frame %q where a text message was expected", b)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("message %s: %v", b, err)
	}
	return m
}

func wsWrite(t *testing.T, c *websocket.Conn, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if err := c.Write(context.Background(), websocket.MessageText, b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestExecStreamWebSocket(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	_, otherKey := e.team(false)
	e.host("h1")
	sid := e.create(key)
	srv := httptest.NewServer(e.h)
	t.Cleanup(srv.Close)

	c, _, err := wsDial(t, srv, "/v1/sandboxes/"+sid+"/exec/stream", key)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	wsWrite(t, c, map[string]any{"cmd": "cat", "args": []string{"-"}})
	start := wsRead(t, c)
	if start["type"] != "start" || start["pid"] == nil {
		t.Fatalf("first message %v", start)
	}
	if m := wsRead(t, c); m["type"] != "stdout" || m["data"] != b64("cat -\n") {
		t.Fatalf("banner %v", m)
	}
	wsWrite(t, c, map[string]any{"type": "stdin", "data": b64("hello")})
	if m := wsRead(t, c); m["type"] != "stdout" || m["data"] != b64("hello") {
		t.Fatalf("echo %v", m)
	}
	// A bad message is answered and the session goes on.
	wsWrite(t, c, map[string]any{"type": "signal", "signal": "SIGHUP"})
	if m := wsRead(t, c); m["type"] != "error" || !strings.Contains(m["message"].(string), "signal") {
		t.Fatalf("bad signal %v", m)
	}
	wsWrite(t, c, map[string]any{"type": "close_stdin"})
	if m := wsRead(t, c); m["type"] != "exit" || m["exit_code"] != float64(0) || m["exited"] != true {
		t.Fatalf("exit %v", m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Errorf("after exit: %v, want a normal close", err)
	}

	// A bad first message ends the session with an error naming the field.
	c2, _, err := wsDial(t, srv, "/v1/sandboxes/"+sid+"/exec/stream", key)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.CloseNow()
	wsWrite(t, c2, map[string]any{"args": []string{"x"}})
	if m := wsRead(t, c2); m["type"] != "error" || m["code"] != CodeInvalidArgument || !strings.HasPrefix(m["message"].(string), "cmd:") {
		t.Fatalf("missing cmd: %v", m)
	}

	// Other teams get a plain 404 before any upgrade; paused sandboxes 409.
	_, resp, err := wsDial(t, srv, "/v1/sandboxes/"+sid+"/exec/stream", otherKey)
	if err == nil || resp == nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("other team: %v %v", err, resp)
	}
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/pause", key, nil); r.status != http.StatusAccepted {
		t.Fatalf("pause: %d", r.status)
	}
	e.waitStatus(key, sid, "paused")
	_, resp, err = wsDial(t, srv, "/v1/sandboxes/"+sid+"/exec/stream", key)
	if err == nil || resp == nil || resp.StatusCode != http.StatusConflict {
		t.Errorf("paused: %v %v", err, resp)
	}
}

func TestBackgroundProcessesAndAttach(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	_, otherKey := e.team(false)
	e.host("h1")
	sid := e.create(key)
	srv := httptest.NewServer(e.h)
	t.Cleanup(srv.Close)

	r := e.do("POST", "/v1/sandboxes/"+sid+"/exec", key, map[string]any{"cmd": "sleep 100", "background": true, "tag": "sleeper"})
	var bg BackgroundProcess
	r.decode(t, &bg)
	if r.status != http.StatusAccepted || bg.PID == 0 || bg.Tag != "sleeper" {
		t.Fatalf("background: %d %s", r.status, r.body)
	}
	// The fake keeps a process alive only with stdin open; a background
	// exec without it has already ended, so start one over the stream.
	c, _, err := wsDial(t, srv, "/v1/sandboxes/"+sid+"/exec/stream", key)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	wsWrite(t, c, map[string]any{"cmd": "sleep 100", "tag": "live"})
	pid := uint32(wsRead(t, c)["pid"].(float64))
	wsRead(t, c) // banner
	c.Close(websocket.StatusNormalClosure, "leaving")

	var list struct {
		Processes []struct {
			PID uint32 `json:"pid"`
			Tag string `json:"tag"`
		} `json:"processes"`
	}
	r = e.do("GET", "/v1/sandboxes/"+sid+"/processes", key, nil)
	r.decode(t, &list)
	if r.status != 200 || len(list.Processes) != 1 || list.Processes[0].PID != pid || list.Processes[0].Tag != "live" {
		t.Fatalf("list: %d %s (want pid %d)", r.status, r.body, pid)
	}

	a, _, err := wsDial(t, srv, "/v1/sandboxes/"+sid+"/processes/"+itoa(pid)+"/attach", key)
	if err != nil {
		t.Fatal(err)
	}
	defer a.CloseNow()
	if m := wsRead(t, a); m["type"] != "start" || m["pid"] != float64(pid) {
		t.Fatalf("attach start %v", m)
	}
	wsRead(t, a) // the fake replays from the start: banner

	tests := []struct {
		name, method, path, key string
		status                  int
	}{
		{"kill bad pid", "DELETE", "/processes/abc", key, 400},
		{"kill bad signal", "DELETE", "/processes/" + itoa(pid) + "?signal=HUP", key, 400},
		{"kill unknown pid", "DELETE", "/processes/99999", key, 404},
		{"other team list", "GET", "/processes", otherKey, 404},
		{"other team kill", "DELETE", "/processes/" + itoa(pid), otherKey, 404},
		{"attach unknown pid", "GET", "/processes/99999/attach", key, 404},
		{"kill", "DELETE", "/processes/" + itoa(pid) + "?signal=SIGTERM", key, 204},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r := e.do(tt.method, "/v1/sandboxes/"+sid+tt.path, tt.key, nil); r.status != tt.status {
				t.Errorf("%d %s, want %d", r.status, r.body, tt.status)
			}
		})
	}
	if m := wsRead(t, a); m["type"] != "exit" || m["exited"] != false || m["exit_code"] != float64(143) {
		t.Fatalf("attached end %v", m)
	}
	r = e.do("GET", "/v1/sandboxes/"+sid+"/processes", key, nil)
	if r.decode(t, &list); len(list.Processes) != 0 {
		t.Errorf("after kill: %s", r.body)
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func TestPTYWebSocket(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	e.host("h1")
	sid := e.create(key)
	srv := httptest.NewServer(e.h)
	t.Cleanup(srv.Close)

	for _, bad := range []string{"?cols=0", "?rows=x", "?cols=5000"} {
		if r := e.do("GET", "/v1/sandboxes/"+sid+"/pty"+bad, key, nil); r.status != 400 {
			t.Errorf("%s: %d %s", bad, r.status, r.body)
		}
	}
	c, _, err := wsDial(t, srv, "/v1/sandboxes/"+sid+"/pty?cols=100&rows=30", key)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if m := wsRead(t, c); m["type"] != "start" {
		t.Fatalf("start %v", m)
	}
	readBin := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		typ, b, err := c.Read(ctx)
		if err != nil || typ != websocket.MessageBinary {
			t.Fatalf("terminal frame: %v %v %q", err, typ, b)
		}
		return string(b)
	}
	if got := readBin(); !strings.Contains(got, "SHELL") {
		t.Errorf("banner %q: the default command is the user's shell", got)
	}
	if err := c.Write(context.Background(), websocket.MessageBinary, []byte("ls\r")); err != nil {
		t.Fatal(err)
	}
	if got := readBin(); got != "ls\r" {
		t.Errorf("echo %q", got)
	}
	wsWrite(t, c, map[string]any{"type": "resize", "cols": 120, "rows": 40})
	if got := readBin(); got != "size 40 120\n" {
		t.Errorf("resize %q", got)
	}
	wsWrite(t, c, map[string]any{"type": "resize", "cols": 0, "rows": 40})
	if m := wsRead(t, c); m["type"] != "error" || !strings.HasPrefix(m["message"].(string), "cols:") {
		t.Errorf("bad resize %v", m)
	}
	wsWrite(t, c, map[string]any{"type": "kill"})
	if m := wsRead(t, c); m["type"] != "exit" || m["exit_code"] != float64(137) {
		t.Errorf("exit %v", m)
	}
}

func TestFilesAndMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(_ *env, d *Deps) { d.MaxUploadBytes = 1024 })
	_, key := e.team(false)
	_, otherKey := e.team(false)
	e.host("h1")
	sid := e.create(key)
	base := "/v1/sandboxes/" + sid

	r := e.do("PUT", base+"/files?path=/data/a.txt", key, "hello world")
	if r.status != http.StatusCreated {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	r = e.do("GET", base+"/files?path=/data/a.txt", key, nil)
	if r.status != 200 || string(r.body) != "hello world" || r.hdr.Get("Content-Length") != "11" {
		t.Fatalf("download: %d %q %v", r.status, r.body, r.hdr)
	}
	if r := e.do("PUT", base+"/files?path=/data/big", key, strings.Repeat("x", 1025)); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized upload: %d %s", r.status, r.body)
	}
	if r := e.do("POST", base+"/files/mkdir", key, map[string]any{"path": "/data/sub/deeper"}); r.status != http.StatusCreated {
		t.Errorf("mkdir: %d %s", r.status, r.body)
	}
	var list struct {
		Entries []struct {
			Path string `json:"path"`
			Type string `json:"type"`
		} `json:"entries"`
	}
	r = e.do("GET", base+"/files/list?path=/data&depth=2", key, nil)
	r.decode(t, &list)
	got := map[string]string{}
	for _, en := range list.Entries {
		got[en.Path] = en.Type
	}
	if r.status != 200 || got["/data/a.txt"] != "file" || got["/data/sub"] != "dir" || got["/data/sub/deeper"] != "dir" {
		t.Errorf("list: %d %s", r.status, r.body)
	}
	var st struct {
		Size int64  `json:"size"`
		Type string `json:"type"`
	}
	r = e.do("GET", base+"/files/stat?path=/data/a.txt", key, nil)
	if r.decode(t, &st); r.status != 200 || st.Size != 11 || st.Type != "file" {
		t.Errorf("stat: %d %s", r.status, r.body)
	}
	if r := e.do("DELETE", base+"/files?path=/data", key, nil); r.status != http.StatusNoContent {
		t.Errorf("remove: %d %s", r.status, r.body)
	}

	tests := []struct {
		name, method, path, key string
		body                    any
		status                  int
		field                   string
	}{
		{"download without path", "GET", "/files", key, nil, 400, "path"},
		{"download with NUL", "GET", "/files?path=/a%00b", key, nil, 400, "path"},
		{"upload without path", "PUT", "/files?path=", key, "x", 400, "path"},
		{"mkdir without path", "POST", "/files/mkdir", key, map[string]any{}, 400, "path"},
		{"mkdir unknown field", "POST", "/files/mkdir", key, map[string]any{"path": "/x", "mode": 1}, 400, "mode"},
		{"list bad depth", "GET", "/files/list?path=/&depth=17", key, nil, 400, "depth"},
		{"stat removed", "GET", "/files/stat?path=/data/a.txt", key, nil, 404, ""},
		{"download removed", "GET", "/files?path=/data/a.txt", key, nil, 404, ""},
		{"metrics bad since", "GET", "/metrics?since=yesterday", key, nil, 400, "since"},
		{"other team download", "GET", "/files?path=/x", otherKey, nil, 404, ""},
		{"other team metrics", "GET", "/metrics", otherKey, nil, 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(tt.method, base+tt.path, tt.key, tt.body)
			if r.status != tt.status {
				t.Fatalf("%d %s, want %d", r.status, r.body, tt.status)
			}
			if tt.field != "" {
				if _, msg := r.errCode(t); !strings.HasPrefix(msg, tt.field+":") {
					t.Errorf("message %q does not name %s", msg, tt.field)
				}
			}
		})
	}

	var m struct {
		Samples []struct {
			CPU float64 `json:"cpu_percent"`
			Mem uint64  `json:"memory_bytes"`
		} `json:"samples"`
	}
	r = e.do("GET", base+"/metrics", key, nil)
	if r.decode(t, &m); r.status != 200 || len(m.Samples) == 0 || m.Samples[0].Mem == 0 {
		t.Errorf("metrics: %d %s", r.status, r.body)
	}

	// Paused: files are 409, metrics stay readable.
	e.do("POST", base+"/pause", key, nil)
	e.waitStatus(key, sid, "paused")
	if r := e.do("GET", base+"/files/stat?path=/", key, nil); r.status != http.StatusConflict {
		t.Errorf("stat on paused: %d", r.status)
	}
	if r := e.do("GET", base+"/metrics", key, nil); r.status != 200 {
		t.Errorf("metrics on paused: %d %s", r.status, r.body)
	}
}

// An upload without a length is cut at the limit and refused with 413.
func TestChunkedUploadOverLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(_ *env, d *Deps) { d.MaxUploadBytes = 1 << 10 })
	_, key := e.team(false)
	e.host("h1")
	sid := e.create(key)
	for _, n := range []int{1 << 10, 1<<10 + 1} {
		req := httptest.NewRequest("PUT", "/v1/sandboxes/"+sid+"/files?path=/blob", io.MultiReader(strings.NewReader(strings.Repeat("y", n))))
		req.ContentLength = -1
		req.Header.Set("X-API-Key", key)
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, req)
		want := http.StatusCreated
		if n > 1<<10 {
			want = http.StatusRequestEntityTooLarge
		}
		if w.Code != want {
			t.Errorf("%d bytes: %d %s, want %d", n, w.Code, w.Body, want)
		}
	}
}

func TestInsideErrorClasses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		class  error
		status int
	}{
		{hostclient.ErrNotFound, 404},
		{hostclient.ErrInvalid, 400},
		{hostclient.ErrNoSpace, 507},
		{hostclient.ErrConflict, 409},
		{hostclient.ErrUnavailable, 503},
	}
	for _, tt := range tests {
		err := &hostclient.Error{Op: "stat path", Class: tt.class, Message: "/x: what the agent said"}
		ae := toAPIError(insideError(err))
		if ae.Status != tt.status {
			t.Errorf("%v: %d, want %d", tt.class, ae.Status, tt.status)
		}
		if tt.status == 404 && ae.Message != "/x: what the agent said" {
			t.Errorf("404 message %q hides what is missing", ae.Message)
		}
	}
}
