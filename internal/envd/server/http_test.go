package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/wrenn/wrenn/proto/envd/process"
	"github.com/wrenn/wrenn/proto/envd/process/processconnect"
)

func TestHealthAndUnknownRoutes(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	if code, _ := httpDo(t, "GET", e.url+"/health", "", ""); code != 204 {
		t.Fatalf("GET /health = %d, want 204", code)
	}
	if code, _ := httpDo(t, "GET", e.url+"/nope", "", ""); code != 404 {
		t.Fatalf("GET /nope = %d, want 404", code)
	}
}

func TestAccessToken(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	const token = "secret-token-1"

	// Before /init sets a token everything is open.
	if code, _ := httpDo(t, "GET", e.url+"/envs", "", ""); code != 200 {
		t.Fatalf("GET /envs before init = %d", code)
	}
	if code, body := httpDo(t, "POST", e.url+"/init", "", `{"accessToken":"`+token+`"}`); code != 204 {
		t.Fatalf("POST /init = %d %s", code, body)
	}

	tests := []struct {
		name, method, path, token, body string
		want                            int
	}{
		{"health needs nothing", "GET", "/health", "", "", 204},
		{"envs without token", "GET", "/envs", "", "", 401},
		{"envs with wrong token", "GET", "/envs", "secret-token-2", "", 401},
		{"envs with token prefix", "GET", "/envs", "secret", "", 401},
		{"envs with token", "GET", "/envs", token, "", 200},
		{"metrics without token", "GET", "/metrics", "", "", 401},
		{"re-init without token", "POST", "/init", "", `{"accessToken":"stolen"}`, 401},
		{"re-init with wrong token", "POST", "/init", "stolen", `{"accessToken":"stolen"}`, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := httpDo(t, tc.method, e.url+tc.path, tc.token, tc.body)
			if code != tc.want {
				t.Fatalf("%s %s = %d %s, want %d", tc.method, tc.path, code, body, tc.want)
			}
			if code == 401 {
				var he httpError
				if err := json.Unmarshal([]byte(body), &he); err != nil || he.Code != 401 || he.Message == "" {
					t.Fatalf("401 body %q is not a JSON error", body)
				}
			}
		})
	}

	t.Run("rpc", func(t *testing.T) {
		for _, proto := range protocols {
			c := proto.client(e.url)
			_, err := c.List(context.Background(), connect.NewRequest(&pb.ListRequest{}))
			wantCode(t, err, connect.CodeUnauthenticated)
			s, err := c.Start(context.Background(), startReq("true"))
			if err == nil {
				for s.Receive() {
					t.Fatalf("%s: got an event without a token", proto.name)
				}
				err = s.Err()
			}
			wantCode(t, err, connect.CodeUnauthenticated)

			authed := processconnect.NewProcessClient(http1Client(), e.url, connect.WithInterceptors(tokenInterceptor(token)))
			if _, err := authed.List(context.Background(), connect.NewRequest(&pb.ListRequest{})); err != nil {
				t.Fatalf("List with token: %v", err)
			}
			if r := run(t, authed, startReq("echo", "ok")); r.stdout.String() != "ok\n" {
				t.Fatalf("Start with token: %q", r.stdout.String())
			}
		}
	})

	// The holder of the token may rotate it.
	if code, body := httpDo(t, "POST", e.url+"/init", token, `{"accessToken":"rotated"}`); code != 204 {
		t.Fatalf("rotate = %d %s", code, body)
	}
	if code, _ := httpDo(t, "GET", e.url+"/envs", token, ""); code != 401 {
		t.Fatalf("old token still accepted: %d", code)
	}
	if code, _ := httpDo(t, "GET", e.url+"/envs", "rotated", ""); code != 200 {
		t.Fatalf("new token refused: %d", code)
	}
}

// tokenInterceptor adds the access token to every call, as the SDKs do.
func tokenInterceptor(token string) connect.Interceptor {
	return tokenAdder(token)
}

type tokenAdder string

func (t tokenAdder) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set(AccessTokenHeader, string(t))
		return next(ctx, req)
	}
}

func (t tokenAdder) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set(AccessTokenHeader, string(t))
		return conn
	}
}

func (t tokenAdder) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// fakeClock records what /init asked the clock to become.
type fakeClock struct {
	mu  sync.Mutex
	set []time.Time
}

func (c *fakeClock) Set(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.set = append(c.set, t)
	return nil
}

func (c *fakeClock) calls() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Time(nil), c.set...)
}

func TestInitSetsDefaults(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := &fakeClock{}
	e := startEnvd(t, Options{SetClock: clock.Set, Now: func() time.Time { return now }, BaseEnv: []string{"PATH=/usr/bin:/bin", "FROM_IMAGE=1", "FOO=image"}})
	workdir := t.TempDir()

	body := fmt.Sprintf(`{"envVars":{"FOO":"init","BAR":"b a r"},"defaultWorkdir":%q,"defaultUser":"root","timestamp":%q}`,
		workdir, now.Add(-time.Hour).Format(time.RFC3339))
	if code, resp := httpDo(t, "POST", e.url+"/init", "", body); code != 204 {
		t.Fatalf("POST /init = %d %s", code, resp)
	}
	if got := clock.calls(); len(got) != 0 {
		t.Fatalf("clock set backwards to %v", got)
	}

	code, resp := httpDo(t, "GET", e.url+"/envs", "", "")
	var envs map[string]string
	if code != 200 || json.Unmarshal([]byte(resp), &envs) != nil || envs["FOO"] != "init" || envs["BAR"] != "b a r" {
		t.Fatalf("GET /envs = %d %s", code, resp)
	}

	c := e.client()
	r := run(t, c, startReq("/bin/sh", "-c", `echo "$FOO|$BAR|$FROM_IMAGE|$HOME|$USER"; pwd`))
	if want := "init|b a r|1|/root|root\n" + workdir + "\n"; r.stdout.String() != want {
		t.Fatalf("got %q, want %q", r.stdout.String(), want)
	}
	req := startReq("/bin/sh", "-c", `echo "$FOO"; pwd`)
	req.Msg.Process.Envs = map[string]string{"FOO": "request"}
	req.Msg.Process.Cwd = ptr("/")
	if r := run(t, c, req); r.stdout.String() != "request\n/\n" {
		t.Fatalf("request env and cwd: %q", r.stdout.String())
	}

	// A later /init merges variables and moves the clock forward only.
	ahead := now.Add(90 * time.Second)
	body = fmt.Sprintf(`{"envVars":{"BAZ":"z"},"timestamp":%q}`, ahead.Format(time.RFC3339Nano))
	if code, resp := httpDo(t, "POST", e.url+"/init", "", body); code != 204 {
		t.Fatalf("POST /init = %d %s", code, resp)
	}
	if got := clock.calls(); len(got) != 1 || !got[0].Equal(ahead) {
		t.Fatalf("clock calls %v, want [%v]", got, ahead)
	}
	if r := run(t, c, startReq("/bin/sh", "-c", `echo "$FOO$BAZ"`)); r.stdout.String() != "initz\n" {
		t.Fatalf("merged env: %q", r.stdout.String())
	}

	for _, bad := range []string{`{"defaultUser":"no-such-user-xyz"}`, `{"defaultWorkdir":"relative"}`, `{"envVars":{"A=B":"c"}}`, `{"accessToken":""}`, `{`, `{"timestamp":"yesterday"}`} {
		if code, resp := httpDo(t, "POST", e.url+"/init", "", bad); code != 400 || !strings.Contains(resp, `"code":400`) {
			t.Errorf("POST /init %s = %d %s, want 400", bad, code, resp)
		}
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	code, body := httpDo(t, "GET", e.url+"/metrics", "", "")
	if code != 200 {
		t.Fatalf("GET /metrics = %d %s", code, body)
	}
	var raw map[string]json.Number
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatalf("metrics body %q: %v", body, err)
	}
	for _, k := range []string{"cpu_count", "cpu_used_pct", "mem_total", "mem_used", "disk_total", "disk_used"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("metrics lack %q: %s", k, body)
		}
	}
	var m Metrics
	_ = json.Unmarshal([]byte(body), &m)
	if m.CPUCount < 1 || m.CPUUsedPct < 0 || m.CPUUsedPct > 100 || m.MemTotal == 0 || m.MemUsed > m.MemTotal || m.DiskTotal == 0 || m.DiskUsed > m.DiskTotal {
		t.Fatalf("implausible metrics %+v", m)
	}
}

func TestRunAsAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a user and switch to it")
	}
	for _, tool := range []string{"useradd", "userdel", "groupadd", "groupdel"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	name := fmt.Sprintf("wrenntest%d", time.Now().UnixNano()%1_000_000)
	group := name + "g"
	if out, err := exec.Command("groupadd", group).CombinedOutput(); err != nil {
		t.Fatalf("groupadd: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("groupdel", group).Run() })
	if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", "-G", group, name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", "-r", name).CombinedOutput(); err != nil {
			t.Errorf("userdel: %v %s", err, out)
		}
	})
	uidOut, err := exec.Command("id", "-u", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	gidOut, err := exec.Command("getent", "group", group).Output()
	if err != nil {
		t.Fatal(err)
	}
	wantUID := strings.TrimSpace(string(uidOut))
	wantGID := strings.Split(strings.TrimSpace(string(gidOut)), ":")[2]

	e := startEnvd(t, Options{})
	c := e.client()
	req := startReq("/bin/sh", "-c", `id -u; id -G; echo "$HOME $USER $LOGNAME"; pwd; touch mine && stat -c %U mine`)
	req.Header().Set("Authorization", basicUser(name))
	r := run(t, c, req)
	lines := strings.Split(strings.TrimSpace(r.stdout.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("output %q stderr %q", r.stdout.String(), r.stderr.String())
	}
	home := "/home/" + name
	if lines[0] != wantUID {
		t.Errorf("uid %q, want %q", lines[0], wantUID)
	}
	if !contains(strings.Fields(lines[1]), wantGID) {
		t.Errorf("groups %q lack %s", lines[1], wantGID)
	}
	if lines[2] != home+" "+name+" "+name || lines[3] != home || lines[4] != name {
		t.Errorf("identity lines %q", lines[2:])
	}

	// /init can make that user the default.
	if code, resp := httpDo(t, "POST", e.url+"/init", "", `{"defaultUser":"`+name+`"}`); code != 204 {
		t.Fatalf("init: %d %s", code, resp)
	}
	if r := run(t, c, startReq("id", "-un")); r.stdout.String() != name+"\n" {
		t.Fatalf("default user: %q", r.stdout.String())
	}
	// The header still wins over the default.
	req = startReq("id", "-un")
	req.Header().Set("Authorization", basicUser("root"))
	if r := run(t, c, req); r.stdout.String() != "root\n" {
		t.Fatalf("header user: %q", r.stdout.String())
	}
	// An unprivileged process cannot read root's files.
	req = startReq("/bin/sh", "-c", "cat /etc/shadow")
	req.Header().Set("Authorization", basicUser(name))
	if r := run(t, c, req); r.end.GetExitCode() == 0 {
		t.Fatalf("user %s read /etc/shadow", name)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestParseBasicUser(t *testing.T) {
	t.Parallel()
	tests := []struct {
		header, want string
		wantErr      bool
	}{
		{"", "", false},
		{basicUser("user"), "user", false},
		{"basic " + strings.TrimPrefix(basicUser("root"), "Basic "), "root", false},
		{basicUser(""), "", false},
		{"Basic " + "dXNlcjpwYXNz", "user", false}, // user:pass
		{"Bearer abc", "", true},
		{"Basic", "", true},
		{"Basic !!!", "", true},
		{basicUser("../etc"), "", true},
	}
	for _, tc := range tests {
		got, err := ParseBasicUser(tc.header)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseBasicUser(%q) = %q, %v; want %q, error %v", tc.header, got, err, tc.want, tc.wantErr)
		}
	}
}

func FuzzParseBasicUser(f *testing.F) {
	f.Add(basicUser("user"))
	f.Add("Basic Og==")
	f.Add("Basic")
	f.Add("Negotiate x")
	f.Fuzz(func(t *testing.T, header string) {
		name, err := ParseBasicUser(header)
		if err != nil {
			if name != "" {
				t.Fatalf("name %q with error %v", name, err)
			}
			return
		}
		if strings.ContainsAny(name, ":/\x00\n") {
			t.Fatalf("ParseBasicUser(%q) = %q", header, name)
		}
	})
}

func FuzzDecodeInit(f *testing.F) {
	f.Add(`{"accessToken":"t","envVars":{"A":"b"},"defaultUser":"root","defaultWorkdir":"/w","timestamp":"2026-01-01T00:00:00Z"}`)
	f.Add(``)
	f.Add(`{"envVars":{"":"x"}}`)
	f.Add(`{} {}`)
	f.Add(`{"timestamp":"2026-01-01T00:00:00.123456789+02:00"}`)
	f.Fuzz(func(t *testing.T, body string) {
		req, err := DecodeInit(strings.NewReader(body))
		if err != nil {
			return
		}
		if req.AccessToken != nil && *req.AccessToken == "" {
			t.Fatal("empty token accepted")
		}
		for k, v := range req.EnvVars {
			if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
				t.Fatalf("bad variable %q=%q accepted", k, v)
			}
		}
		if req.DefaultWorkdir != nil && *req.DefaultWorkdir != "" && (*req.DefaultWorkdir)[0] != '/' {
			t.Fatalf("relative workdir %q accepted", *req.DefaultWorkdir)
		}
		// What was accepted survives a round trip.
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("marshal accepted request: %v", err)
		}
		if _, err := DecodeInit(bytes.NewReader(b)); err != nil {
			t.Fatalf("re-decode %s: %v", b, err)
		}
	})
}

func TestMergeEnv(t *testing.T) {
	t.Parallel()
	got := mergeEnv([]string{"PATH=/bin", "A=1", "bogus", "=x"}, map[string]string{"B": "2", "A": "3"}, map[string]string{"A": "4", "C": strconv.Itoa(5)})
	want := []string{"PATH=/bin", "A=4", "B=2", "C=5"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("mergeEnv = %v, want %v", got, want)
	}
}

func TestCORSPreflight(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	if code, body := httpDo(t, "POST", e.url+"/init", "", `{"accessToken":"tok"}`); code != 204 {
		t.Fatalf("init: %d %s", code, body)
	}
	req, _ := http.NewRequest("OPTIONS", e.url+"/process.Process/Start", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "authorization,x-access-token,content-type")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// Preflights carry no token and must still pass.
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "*" ||
		resp.Header.Get("Access-Control-Allow-Headers") != "authorization,x-access-token,content-type" {
		t.Fatalf("preflight = %d %v", resp.StatusCode, resp.Header)
	}
}
