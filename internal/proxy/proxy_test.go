package proxy

import (
	"errors"
	"strings"
	"testing"
)

const sid = "sb-abcdefghijklmnopqrst"

func TestParsePath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in       string
		wantPort int
		wantRest string
		wantErr  bool
	}{
		{"/proxy/" + sid + "/8080", 8080, "", false},
		{"/proxy/" + sid + "/8080/", 8080, "/", false},
		{"/proxy/" + sid + "/1/a/b/", 1, "/a/b/", false},
		{"/proxy/" + sid + "/65535/a%2Fb?x", 65535, "/a%2Fb?x", false},
		// Dot segments belong to the application; they cannot reach
		// another sandbox because the id and port are read first.
		{"/proxy/" + sid + "/80/../../sb-bbbbbbbbbbbbbbbbbbbb/80/", 80, "/../../sb-bbbbbbbbbbbbbbbbbbbb/80/", false},
		{"/proxy/" + sid + "/0/", 0, "", true},
		{"/proxy/" + sid + "/65536/", 0, "", true},
		{"/proxy/" + sid + "/080/", 0, "", true},
		{"/proxy/" + sid + "/-1/", 0, "", true},
		{"/proxy/" + sid + "/+80/", 0, "", true},
		{"/proxy/" + sid + "/", 0, "", true},
		{"/proxy/" + sid, 0, "", true},
		{"/proxy/sb-short/80/", 0, "", true},
		{"/proxy/SB-ABCDEFGHIJKLMNOPQRST/80/", 0, "", true},
		{"/proxy//80/", 0, "", true},
		{"/other/" + sid + "/80/", 0, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			tg, rest, err := ParsePath(tc.in)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("ParsePath(%q) = %+v %q %v, want ErrInvalid", tc.in, tg, rest, err)
				}
				return
			}
			if err != nil || tg.SandboxID != sid || tg.Port != tc.wantPort || rest != tc.wantRest {
				t.Fatalf("ParsePath(%q) = %+v %q %v, want port %d rest %q", tc.in, tg, rest, err, tc.wantPort, tc.wantRest)
			}
		})
	}
}

func TestParseHost(t *testing.T) {
	t.Parallel()
	tests := []struct {
		host, domain string
		wantPort     int
		wantErr      error
	}{
		{"8080-" + sid + ".sandbox.localhost", "sandbox.localhost", 8080, nil},
		{"8080-" + sid + ".sandbox.localhost:9000", "sandbox.localhost", 8080, nil},
		{"8080-" + strings.ToUpper(sid) + ".Sandbox.Localhost.", "sandbox.localhost.", 8080, nil},
		{"49983-" + sid + ".wrenn.example", "wrenn.example", 49983, nil},
		{"api.wrenn.example", "wrenn.example", 0, ErrInvalid},
		{"x.8080-" + sid + ".wrenn.example", "wrenn.example", 0, ErrInvalid},
		{"0-" + sid + ".wrenn.example", "wrenn.example", 0, ErrInvalid},
		{"8080-sb-nope.wrenn.example", "wrenn.example", 0, ErrInvalid},
		{"wrenn.example", "wrenn.example", 0, ErrNotSandboxHost},
		{"8080-" + sid + ".evilwrenn.example", "wrenn.example", 0, ErrNotSandboxHost},
		{"127.0.0.1:8080", "wrenn.example", 0, ErrNotSandboxHost},
		{"[::1]:8080", "wrenn.example", 0, ErrNotSandboxHost},
		{"8080-" + sid + ".wrenn.example", "", 0, ErrNotSandboxHost},
	}
	for _, tc := range tests {
		t.Run(tc.host+"@"+tc.domain, func(t *testing.T) {
			tg, err := ParseHost(tc.host, tc.domain)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ParseHost = %+v %v, want %v", tg, err, tc.wantErr)
				}
				return
			}
			if err != nil || tg.SandboxID != sid || tg.Port != tc.wantPort {
				t.Fatalf("ParseHost = %+v %v, want %s port %d", tg, err, sid, tc.wantPort)
			}
		})
	}
}

// The table of redirects the agent rewrites, and what the control plane
// makes of them again.
func TestRewriteAndStripLocation(t *testing.T) {
	t.Parallel()
	tg := Target{SandboxID: sid, Port: 8000}
	const guest = "10.88.0.2"
	p := tg.Prefix()
	tests := []struct {
		name, in, agent, user string
	}{
		{"root-relative", "/x", p + "/x", "/x"},
		{"root", "/", p + "/", "/"},
		{"trailing slash kept", "/dir/", p + "/dir/", "/dir/"},
		{"query and fragment", "/a/?q=1&r=%2F#frag", p + "/a/?q=1&r=%2F#frag", "/a/?q=1&r=%2F#frag"},
		{"absolute to guest ip", "http://10.88.0.2:8000/login/", p + "/login/", "/login/"},
		{"absolute to localhost", "http://localhost:8000/a?b", p + "/a?b", "/a?b"},
		{"absolute to 127.0.0.1 without path", "http://127.0.0.1:8000", p + "/", "/"},
		{"absolute to 0.0.0.0", "http://0.0.0.0:8000/z", p + "/z", "/z"},
		{"absolute to ipv6 loopback", "http://[::1]:8000/z", p + "/z", "/z"},
		{"absolute to the sandbox hostname", "http://" + sid + ":8000/h", p + "/h", "/h"},
		{"scheme-relative to self", "//localhost:8000/s", p + "/s", "/s"},
		{"escaped path kept", "http://localhost:8000/a%20b/%2F", p + "/a%20b/%2F", "/a%20b/%2F"},
		{"other port of the sandbox", "http://localhost:9000/x", "http://localhost:9000/x", "http://localhost:9000/x"},
		{"https default port is not 8000", "https://localhost/x", "https://localhost/x", "https://localhost/x"},
		{"other host", "https://github.com/login", "https://github.com/login", "https://github.com/login"},
		{"scheme-relative other host", "//github.com/x", "//github.com/x", "//github.com/x"},
		{"relative path", "sub/", "sub/", "sub/"},
		{"dot relative", "../up", "../up", "../up"},
		{"query only", "?page=2", "?page=2", "?page=2"},
		{"userinfo is not rewritten", "http://u@localhost:8000/", "http://u@localhost:8000/", "http://u@localhost:8000/"},
		{"mailto", "mailto:a@b", "mailto:a@b", "mailto:a@b"},
		{"garbage", "http://[::1", "http://[::1", "http://[::1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := RewriteLocation(tc.in, tg, guest)
			if got != tc.agent {
				t.Errorf("RewriteLocation(%q) = %q, want %q", tc.in, got, tc.agent)
			}
			if back := StripLocation(got, tg); back != tc.user {
				t.Errorf("StripLocation(%q) = %q, want %q", got, back, tc.user)
			}
		})
	}
	port80 := Target{SandboxID: sid, Port: 80}
	if got := RewriteLocation("http://10.88.0.2/x", port80, guest); got != port80.Prefix()+"/x" {
		t.Errorf("default http port: %q", got)
	}
	// "/proxy/{id}/80" is a prefix of "/proxy/{id}/8080/": not a match.
	if got := StripLocation("/proxy/"+sid+"/8080/x", port80); got != "/proxy/"+sid+"/8080/x" {
		t.Errorf("StripLocation matched a longer port: %q", got)
	}
	if got := StripLocation(p+"?a", tg); got != "/?a" {
		t.Errorf("StripLocation of prefix with query = %q", got)
	}
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/proxy/" + sid + "/80/", "/proxy/" + sid + "/65535", "/proxy/x/1/", "/proxy/" + sid + "/0/a", "/proxy/" + sid + "/80/../x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tg, rest, err := ParsePath(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if tg.Port < 1 || tg.Port > 65535 {
			t.Fatalf("port %d out of range", tg.Port)
		}
		if tg.Prefix()+rest != s {
			t.Fatalf("Prefix()+rest = %q, input %q", tg.Prefix()+rest, s)
		}
		if rest != "" && rest[0] != '/' {
			t.Fatalf("rest %q does not start with /", rest)
		}
	})
}

func FuzzParseHost(f *testing.F) {
	for _, s := range []string{"8080-" + sid + ".sandbox.localhost", "8080-" + sid + ".sandbox.localhost:1", "a.b", "[::1]:80", "-.sandbox.localhost"} {
		f.Add(s, "sandbox.localhost")
	}
	f.Fuzz(func(t *testing.T, host, domain string) {
		tg, err := ParseHost(host, domain)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotSandboxHost) {
				t.Fatalf("error %v is neither ErrInvalid nor ErrNotSandboxHost", err)
			}
			return
		}
		if tg.Port < 1 || tg.Port > 65535 {
			t.Fatalf("port %d out of range", tg.Port)
		}
		again, err := ParseHost(Host(tg, domain), domain)
		if err != nil || again != tg {
			t.Fatalf("Host(%+v) = %q parses as %+v %v", tg, Host(tg, domain), again, err)
		}
	})
}

func FuzzRewriteLocation(f *testing.F) {
	for _, s := range []string{"/x", "http://localhost:8000/a/", "//h/x", "?q", "http://[::1]:8000", "%zz"} {
		f.Add(s)
	}
	tg := Target{SandboxID: sid, Port: 8000}
	f.Fuzz(func(t *testing.T, loc string) {
		got := RewriteLocation(loc, tg, "10.88.0.2")
		back := StripLocation(got, tg)
		// A root-relative redirect survives the round trip exactly, so
		// trailing slashes and queries reach the user as the app sent them.
		if strings.HasPrefix(loc, "/") && !strings.HasPrefix(loc, "//") && back != loc {
			t.Fatalf("root-relative %q came back as %q (agent %q)", loc, back, got)
		}
		if got != loc && !strings.HasPrefix(got, tg.Prefix()+"/") {
			t.Fatalf("rewrite of %q left the prefix: %q", loc, got)
		}
	})
}
