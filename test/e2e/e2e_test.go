package e2e

import (
	"net/http"
	"testing"
	"time"

	"github.com/wrenn/wrenn/pkg/id"
)

// TestSandboxLifecycle is the first slice end to end: create, exec, destroy,
// and nothing left on the host afterwards.
func TestSandboxLifecycle(t *testing.T) {
	s := startStack(t)
	before := snapshotResources(t, s.dir)

	var created sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 256}, http.StatusAccepted, &created)
	if !id.Valid(id.Sandbox, created.ID) || created.Status != "starting" {
		t.Fatalf("create answered %+v, want a sb- id in status starting", created)
	}
	s.waitStatus(created.ID, "running", 60*time.Second)

	// The leak check below must be able to see a sandbox's resources: while
	// it runs, each kind shows up.
	during := snapshotResources(t, s.dir)
	for what, found := range map[string][]string{
		"network namespace": ours(during.Netns, created.ID), "cgroup": ours(during.Cgroups, created.ID),
		"process": ours(during.Processes, created.ID), "mount": during.Mounts, "loop device": during.Loops,
		"firewall rule": ours(during.Firewall, created.ID),
	} {
		if len(found) == 0 {
			t.Errorf("a running sandbox shows no %s: the leak check could not catch one", what)
		}
	}

	var list struct {
		Sandboxes []sandbox `json:"sandboxes"`
	}
	s.mustDo(http.MethodGet, "/v1/sandboxes", nil, http.StatusOK, &list)
	if len(list.Sandboxes) != 1 || list.Sandboxes[0].ID != created.ID {
		t.Fatalf("list = %+v, want just %s", list.Sandboxes, created.ID)
	}

	t.Run("exec", func(t *testing.T) {
		tests := []struct {
			name       string
			body       map[string]any
			wantStdout string
			wantStderr string
			wantCode   int
		}{
			{"argv", map[string]any{"cmd": "echo", "args": []string{"hi"}}, "hi\n", "", 0},
			{"shell line", map[string]any{"cmd": "echo out; echo err >&2; exit 3"}, "out\n", "err\n", 3},
			{"env and cwd", map[string]any{"cmd": "pwd; echo $GREETING", "env": map[string]string{"GREETING": "hello"}, "cwd": "/tmp"}, "/tmp\nhello\n", "", 0},
			{"isolated pid namespace", map[string]any{"cmd": "cat /proc/1/cmdline | tr '\\0' ' '"}, "/usr/local/bin/wrenn-init ", "", 0},
			{"hostname is the sandbox id", map[string]any{"cmd": "hostname"}, created.ID + "\n", "", 0},
			// sudo and others resolve their own name; unresolved, sudo warns
			// on every run.
			{"hostname resolves", map[string]any{"cmd": "getent hosts \"$(hostname)\" | awk '{print $1}'"}, "127.0.1.1\n", "", 0},
			{"sudo without warnings", map[string]any{"cmd": "sudo true", "user": "wrenn-user"}, "", "", 0},
			// The seccomp profile refuses new user namespaces.
			{"no user namespaces", map[string]any{"cmd": "unshare -U true 2>/dev/null; echo $?"}, "1\n", "", 0},
			{"as wrenn-user", map[string]any{"cmd": "id -un", "user": "wrenn-user"}, "wrenn-user\n", "", 0},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				var res execResult
				s.mustDo(http.MethodPost, "/v1/sandboxes/"+created.ID+"/exec", tc.body, http.StatusOK, &res)
				if res.Stdout != tc.wantStdout || res.Stderr != tc.wantStderr || res.ExitCode != tc.wantCode {
					t.Errorf("exec %v = %+v, want stdout %q stderr %q exit %d", tc.body, res, tc.wantStdout, tc.wantStderr, tc.wantCode)
				}
			})
		}
	})

	t.Run("files persist between execs", func(t *testing.T) {
		var res execResult
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+created.ID+"/exec", map[string]any{"cmd": "echo kept > /root/f"}, http.StatusOK, &res)
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+created.ID+"/exec", map[string]any{"cmd": "cat", "args": []string{"/root/f"}}, http.StatusOK, &res)
		if res.Stdout != "kept\n" {
			t.Errorf("file read back %q, want %q", res.Stdout, "kept\n")
		}
	})

	t.Run("pause and resume keep memory and files", func(t *testing.T) {
		var res execResult
		// A background counter shows that processes stop while paused and
		// go on from where they were.
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+created.ID+"/exec",
			map[string]any{"cmd": "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/n; sleep 0.05; done' >/dev/null 2>&1 &"}, http.StatusOK, &res)
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+created.ID+"/pause", nil, http.StatusAccepted, nil)
		s.waitStatus(created.ID, "paused", 30*time.Second)

		var e struct {
			Error struct{ Code string } `json:"error"`
		}
		code, err := s.do(http.MethodPost, "/v1/sandboxes/"+created.ID+"/exec", map[string]any{"cmd": "true"}, &e)
		if err != nil || code != http.StatusConflict || e.Error.Code != "conflict" {
			t.Errorf("exec on a paused sandbox: status %d %+v %v, want 409 conflict", code, e, err)
		}
		time.Sleep(300 * time.Millisecond)

		s.mustDo(http.MethodPost, "/v1/sandboxes/"+created.ID+"/resume", nil, http.StatusAccepted, nil)
		s.waitStatus(created.ID, "running", 30*time.Second)
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+created.ID+"/exec", map[string]any{"cmd": "cat /root/f; a=$(cat /root/n); sleep 0.3; b=$(cat /root/n); [ \"$b\" -gt \"$a\" ] && echo counting"}, http.StatusOK, &res)
		if res.Stdout != "kept\ncounting\n" {
			t.Errorf("after resume: %+v, want the file and a counter that still runs", res)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		other := id.New(id.Sandbox)
		tests := []struct {
			name     string
			key      string
			method   string
			path     string
			body     any
			wantCode int
			wantErr  string
		}{
			{"no key", "", http.MethodGet, "/v1/sandboxes", nil, 401, "unauthorized"},
			{"wrong key", id.NewAPIKey(), http.MethodGet, "/v1/sandboxes", nil, 401, "unauthorized"},
			{"unknown sandbox", s.apiKey, http.MethodGet, "/v1/sandboxes/" + other, nil, 404, "not_found"},
			{"exec unknown sandbox", s.apiKey, http.MethodPost, "/v1/sandboxes/" + other + "/exec", map[string]any{"cmd": "true"}, 404, "not_found"},
			{"malformed json", s.apiKey, http.MethodPost, "/v1/sandboxes", `{"template":`, 400, "invalid_argument"},
			{"unknown template", s.apiKey, http.MethodPost, "/v1/sandboxes", map[string]any{"template": "nope"}, 400, "invalid_argument"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				var e struct {
					Error struct{ Code, Message string } `json:"error"`
				}
				code, err := s.doKey(tc.key, tc.method, tc.path, tc.body, &e)
				if err != nil {
					t.Fatal(err)
				}
				if code != tc.wantCode || e.Error.Code != tc.wantErr || e.Error.Message == "" {
					t.Errorf("status %d error %+v, want %d %s with a message", code, e.Error, tc.wantCode, tc.wantErr)
				}
			})
		}
		var after struct {
			Sandboxes []sandbox `json:"sandboxes"`
		}
		s.mustDo(http.MethodGet, "/v1/sandboxes", nil, http.StatusOK, &after)
		if len(after.Sandboxes) != 1 {
			t.Errorf("bad requests changed the sandbox list: %+v", after.Sandboxes)
		}
	})

	s.mustDo(http.MethodDelete, "/v1/sandboxes/"+created.ID, nil, http.StatusAccepted, nil)
	s.waitStatus(created.ID, "stopped", 60*time.Second)

	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	code, err := s.do(http.MethodPost, "/v1/sandboxes/"+created.ID+"/exec", map[string]any{"cmd": "true"}, &e)
	if err != nil || code != http.StatusConflict || e.Error.Code != "conflict" {
		t.Errorf("exec on a stopped sandbox: status %d %+v %v, want 409 conflict", code, e, err)
	}

	assertNoLeaks(t, before, settledResources(t, s.dir, created.ID), created.ID)
}
