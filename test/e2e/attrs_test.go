package e2e

import (
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// TestCreateAttributes: what a create asks for reaches the sandbox through
// the whole platform. env is every command's environment, metadata finds
// the sandbox in the list, and allow_internet=false cuts egress that a
// sandbox with internet has (the "internet" is a namespace this test makes
// at a public-range address; no traffic leaves the machine).
func TestCreateAttributes(t *testing.T) {
	s := startStack(t)
	before := snapshotResources(t, s.dir)
	inet := fakeInternet(t, "wre2e-inet", "zwe2einet", "198.18.215")

	var online, offline sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal",
		"env": map[string]string{"MODE": "ci", "TOKEN": "t0k en"}, "metadata": map[string]string{"suite": "attrs", "net": "on"}},
		http.StatusAccepted, &online)
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "allow_internet": false,
		"metadata": map[string]string{"suite": "attrs", "net": "off"}}, http.StatusAccepted, &offline)
	s.waitStatus(online.ID, "running", 60*time.Second)
	s.waitStatus(offline.ID, "running", 60*time.Second)

	var res execResult
	s.mustDo(http.MethodPost, "/v1/sandboxes/"+online.ID+"/exec", map[string]any{"cmd": `echo "$MODE|$TOKEN"`}, http.StatusOK, &res)
	if res.Stdout != "ci|t0k en\n" {
		t.Errorf("env in the sandbox: %+v, want ci|t0k en", res)
	}
	var page struct {
		Sandboxes []sandbox `json:"sandboxes"`
	}
	s.mustDo(http.MethodGet, "/v1/sandboxes?metadata="+url.QueryEscape("suite=attrs&net=off"), nil, http.StatusOK, &page)
	if len(page.Sandboxes) != 1 || page.Sandboxes[0].ID != offline.ID {
		t.Errorf("list by metadata: %+v, want only %s", page.Sandboxes, offline.ID)
	}

	fetch := func(sid string) execResult {
		var res execResult
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+sid+"/exec",
			map[string]any{"cmd": "curl -sS --max-time 3 http://" + inet + "/"}, http.StatusOK, &res)
		return res
	}
	// A first SYN on a loaded machine may be lost: the reachable side gets
	// three tries.
	var got execResult
	for range 3 {
		if got = fetch(online.ID); got.ExitCode == 0 {
			break
		}
	}
	if got.ExitCode != 0 || got.Stdout != "hello from outside" {
		t.Errorf("sandbox with internet fetching %s: %+v", inet, got)
	}
	if got := fetch(offline.ID); got.ExitCode == 0 {
		t.Errorf("sandbox created with allow_internet=false reached %s: %+v", inet, got)
	}

	for _, id := range []string{online.ID, offline.ID} {
		s.mustDo(http.MethodDelete, "/v1/sandboxes/"+id, nil, http.StatusAccepted, nil)
		s.waitStatus(id, "stopped", 60*time.Second)
	}
	assertNoLeaks(t, before, settledResources(t, s.dir, online.ID, offline.ID), online.ID, offline.ID)
}

// fakeInternet makes a namespace standing in for the outside world: a veth
// from the host with prefix.1/24 on the host side and prefix.2 inside, and
// an HTTP server on prefix.2:80 that answers "hello from outside". It
// returns that server's address; everything goes with the test.
func fakeInternet(t *testing.T, name, hostIf, prefix string) string {
	t.Helper()
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	_ = exec.Command("ip", "link", "del", hostIf).Run()
	_ = exec.Command("ip", "netns", "del", name).Run()
	ip("netns", "add", name)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", hostIf).Run()
		_ = exec.Command("ip", "netns", "del", name).Run()
	})
	ip("link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", name)
	ip("addr", "add", prefix+".1/24", "dev", hostIf)
	ip("link", "set", hostIf, "up")
	ip("-n", name, "addr", "add", prefix+".2/24", "dev", "eth0")
	ip("-n", name, "link", "set", "eth0", "up")
	ip("-n", name, "link", "set", "lo", "up")
	// Safety: only go on if the host routes the address into our veth.
	if out, err := exec.Command("ip", "route", "get", prefix+".2").Output(); err != nil || !strings.Contains(string(out), "dev "+hostIf) {
		t.Fatalf("route to %s.2 does not go through %s (%s, %v); refusing to send traffic", prefix, hostIf, out, err)
	}

	addr := prefix + ".2:80"
	var ln net.Listener
	err := func() error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			return err
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			return err
		}
		// The socket keeps the namespace it was made in.
		ln, err = net.Listen("tcp4", addr)
		if serr := netns.Set(orig); serr != nil {
			panic("cannot return to the host's network namespace: " + serr.Error())
		}
		return err
	}()
	if err != nil {
		t.Fatalf("listen in %s on %s: %v", name, addr, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hello from outside")
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return addr
}
