package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	envdserver "github.com/wrenn/wrenn/internal/envd/server"
	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
	"github.com/wrenn/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// liveRig is a manager over the fake runtime, network and images whose
// sandboxes all talk to one real envd served in-process on loopback, and a
// Connect client and HTTP base URL for the agent's service.
type liveRig struct {
	*rig
	svc    *Service
	client hostagentv1connect.HostAgentServiceClient
	url    string
	http   *http.Client
}

func newLiveRig(t *testing.T) *liveRig {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the in-process envd starts processes as the root user")
	}
	r := newRig(t, nil)
	envd := envdserver.New(envdserver.Options{})
	envdSrv := httptest.NewServer(envd.Handler())
	t.Cleanup(func() {
		envdSrv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := envd.Close(ctx); err != nil {
			t.Errorf("envd processes still running: %v", err)
		}
	})
	addr := envdSrv.Listener.Addr().String()
	tr := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	opts := r.opts
	opts.EnvdTransport = tr
	opts.Dir = t.TempDir()
	m, err := NewManager(opts)
	if err != nil {
		t.Fatal(err)
	}
	r.m = m
	r.dir = opts.Dir
	svc := &Service{m: m, runtimeName: "fake", envdVersion: EnvdVersion, metrics: NewMetricsSampler(m, nil, time.Second, 4)}
	mux := http.NewServeMux()
	path, h := hostagentv1connect.NewHostAgentServiceHandler(svc)
	mux.Handle(path, h)
	mux.Handle(FilesRoutePattern, svc.FilesHandler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	ctr := &http.Transport{}
	t.Cleanup(ctr.CloseIdleConnections)
	hc := &http.Client{Transport: ctr}
	return &liveRig{rig: r, svc: svc, client: hostagentv1connect.NewHostAgentServiceClient(hc, srv.URL), url: srv.URL, http: hc}
}

func (lr *liveRig) create(t *testing.T) string {
	t.Helper()
	sid := newID()
	if _, err := lr.m.Create(context.Background(), createReq(sid, time.Hour)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lr.m.Destroy(context.Background(), sid); err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("destroy: %v", err)
		}
	})
	return sid
}

// drain reads a process stream to its end and returns pid, output and end.
func drain(t *testing.T, s *connect.ServerStreamForClient[hostagentv1.ProcessEvent]) (pid uint32, stdout, stderr, pty string, end *hostagentv1.ProcessEvent_End) {
	t.Helper()
	var o, e, p strings.Builder
	for s.Receive() {
		ev := s.Msg()
		switch {
		case ev.GetStart() != nil:
			pid = ev.GetStart().GetPid()
		case ev.GetEnd() != nil:
			end = ev.GetEnd()
		default:
			o.Write(ev.GetStdout())
			e.Write(ev.GetStderr())
			p.Write(ev.GetPty())
		}
	}
	if err := s.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	return pid, o.String(), e.String(), p.String(), end
}

func TestProcessRPCs(t *testing.T) {
	t.Parallel()
	lr := newLiveRig(t)
	sid := lr.create(t)
	ctx := context.Background()
	c := lr.client

	t.Run("exec stream with stdin", func(t *testing.T) {
		s, err := c.StartProcess(ctx, connect.NewRequest(&hostagentv1.StartProcessRequest{
			SandboxId: sid, Cmd: "/bin/sh", Args: []string{"-c", "while read x; do echo got $x; done; echo err >&2; exit 3"}, Stdin: true,
		}))
		if err != nil {
			t.Fatal(err)
		}
		if !s.Receive() || s.Msg().GetStart() == nil {
			t.Fatalf("first event %v, %v", s.Msg(), s.Err())
		}
		pid := s.Msg().GetStart().GetPid()
		sel := &hostagentv1.ProcessSelector{Selector: &hostagentv1.ProcessSelector_Pid{Pid: pid}}
		if _, err := c.SendInput(ctx, connect.NewRequest(&hostagentv1.SendInputRequest{SandboxId: sid, Process: sel, Data: []byte("hello\n")})); err != nil {
			t.Fatal(err)
		}
		if _, err := c.CloseStdin(ctx, connect.NewRequest(&hostagentv1.CloseStdinRequest{SandboxId: sid, Process: sel})); err != nil {
			t.Fatal(err)
		}
		_, out, errOut, _, end := drain(t, s)
		if out != "got hello\n" || errOut != "err\n" || end.GetExitCode() != 3 {
			t.Errorf("stdout %q stderr %q end %v", out, errOut, end)
		}
	})

	t.Run("background list attach kill", func(t *testing.T) {
		bg, err := c.StartBackground(ctx, connect.NewRequest(&hostagentv1.StartProcessRequest{
			SandboxId: sid, Cmd: "/bin/sh", Args: []string{"-c", "while true; do echo tick; sleep 0.05; done"}, Tag: "ticker",
		}))
		if err != nil {
			t.Fatal(err)
		}
		pid := bg.Msg.GetPid()
		if pid == 0 || bg.Msg.GetTag() != "ticker" {
			t.Fatalf("background: %v", bg.Msg)
		}
		l, err := c.ListProcesses(ctx, connect.NewRequest(&hostagentv1.ListProcessesRequest{SandboxId: sid}))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range l.Msg.GetProcesses() {
			found = found || (p.GetPid() == pid && p.GetTag() == "ticker" && p.GetCmd() == "/bin/sh")
		}
		if !found {
			t.Fatalf("pid %d not listed: %v", pid, l.Msg.GetProcesses())
		}
		att, err := c.AttachProcess(ctx, connect.NewRequest(&hostagentv1.AttachProcessRequest{
			SandboxId: sid, Process: &hostagentv1.ProcessSelector{Selector: &hostagentv1.ProcessSelector_Tag{Tag: "ticker"}},
		}))
		if err != nil {
			t.Fatal(err)
		}
		// Output arrives while attached; then a kill ends the stream.
		var seen bool
		for att.Receive() && !seen {
			seen = strings.Contains(string(att.Msg().GetStdout()), "tick")
		}
		if !seen {
			t.Fatalf("no output while attached: %v", att.Err())
		}
		if _, err := c.SignalProcess(ctx, connect.NewRequest(&hostagentv1.SignalProcessRequest{
			SandboxId: sid, Process: &hostagentv1.ProcessSelector{Selector: &hostagentv1.ProcessSelector_Pid{Pid: pid}}, Signal: hostagentv1.Signal_SIGNAL_SIGKILL,
		})); err != nil {
			t.Fatal(err)
		}
		_, _, _, _, end := drain(t, att)
		if end == nil || end.GetExited() {
			t.Errorf("end after SIGKILL: %v, want killed by a signal", end)
		}
	})

	t.Run("pty resize", func(t *testing.T) {
		s, err := c.StartProcess(ctx, connect.NewRequest(&hostagentv1.StartProcessRequest{
			SandboxId: sid, Cmd: "/bin/sh", Args: []string{"-c", "stty size; read x; stty size"},
			Pty: &hostagentv1.PtySize{Cols: 80, Rows: 24},
		}))
		if err != nil {
			t.Fatal(err)
		}
		if !s.Receive() || s.Msg().GetStart() == nil {
			t.Fatalf("first event %v", s.Msg())
		}
		sel := &hostagentv1.ProcessSelector{Selector: &hostagentv1.ProcessSelector_Pid{Pid: s.Msg().GetStart().GetPid()}}
		var out strings.Builder
		for !strings.Contains(out.String(), "24 80") && s.Receive() {
			out.Write(s.Msg().GetPty())
		}
		if _, err := c.ResizePty(ctx, connect.NewRequest(&hostagentv1.ResizePtyRequest{SandboxId: sid, Process: sel, Size: &hostagentv1.PtySize{Cols: 100, Rows: 40}})); err != nil {
			t.Fatal(err)
		}
		if _, err := c.SendInput(ctx, connect.NewRequest(&hostagentv1.SendInputRequest{SandboxId: sid, Process: sel, Data: []byte("\n"), Pty: true})); err != nil {
			t.Fatal(err)
		}
		_, _, _, rest, end := drain(t, s)
		if !strings.Contains(rest, "40 100") || end.GetExitCode() != 0 {
			t.Errorf("after resize: %q, end %v", rest, end)
		}
		_, err = c.ResizePty(ctx, connect.NewRequest(&hostagentv1.ResizePtyRequest{SandboxId: sid, Process: sel, Size: &hostagentv1.PtySize{}}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("resize to 0x0: %v", err)
		}
	})

	t.Run("counts as activity", func(t *testing.T) {
		sb, err := lr.m.Get(sid)
		if err != nil {
			t.Fatal(err)
		}
		lr.clock.advance(time.Minute)
		if _, err := c.ListProcesses(ctx, connect.NewRequest(&hostagentv1.ListProcessesRequest{SandboxId: sid})); err != nil {
			t.Fatal(err)
		}
		if got := time.Unix(0, sb.lastActive.Load()); !got.Equal(lr.clock.Now()) {
			t.Errorf("last activity %v, want %v", got, lr.clock.Now())
		}
		if n := sb.busy.Load(); n != 0 {
			t.Errorf("%d calls still marked in flight", n)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		tests := []struct {
			name string
			call func() error
			want connect.Code
		}{
			{"empty cmd", func() error {
				_, err := c.StartBackground(ctx, connect.NewRequest(&hostagentv1.StartProcessRequest{SandboxId: sid}))
				return err
			}, connect.CodeInvalidArgument},
			{"unknown sandbox", func() error {
				_, err := c.ListProcesses(ctx, connect.NewRequest(&hostagentv1.ListProcessesRequest{SandboxId: newID()}))
				return err
			}, connect.CodeNotFound},
			{"no selector", func() error {
				_, err := c.CloseStdin(ctx, connect.NewRequest(&hostagentv1.CloseStdinRequest{SandboxId: sid}))
				return err
			}, connect.CodeInvalidArgument},
			{"unknown pid", func() error {
				_, err := c.SignalProcess(ctx, connect.NewRequest(&hostagentv1.SignalProcessRequest{SandboxId: sid, Process: &hostagentv1.ProcessSelector{Selector: &hostagentv1.ProcessSelector_Pid{Pid: 1 << 30}}}))
				return err
			}, connect.CodeNotFound},
			{"stat of empty path", func() error {
				_, err := c.StatPath(ctx, connect.NewRequest(&hostagentv1.StatPathRequest{SandboxId: sid}))
				return err
			}, connect.CodeInvalidArgument},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if got := connect.CodeOf(tt.call()); got != tt.want {
					t.Errorf("code %v, want %v", got, tt.want)
				}
			})
		}
	})
}

func TestPausedSandboxRefusesInteractiveCalls(t *testing.T) {
	t.Parallel()
	lr := newLiveRig(t)
	sid := lr.create(t)
	ctx := context.Background()
	if _, err := lr.m.Pause(ctx, sid); err != nil {
		t.Fatal(err)
	}
	c := lr.client
	calls := map[string]func() error{
		"start": func() error {
			s, err := c.StartProcess(ctx, connect.NewRequest(&hostagentv1.StartProcessRequest{SandboxId: sid, Cmd: "true"}))
			if err != nil {
				return err
			}
			for s.Receive() {
			}
			return s.Err()
		},
		"list": func() error {
			_, err := c.ListProcesses(ctx, connect.NewRequest(&hostagentv1.ListProcessesRequest{SandboxId: sid}))
			return err
		},
		"stat": func() error {
			_, err := c.StatPath(ctx, connect.NewRequest(&hostagentv1.StatPathRequest{SandboxId: sid, Path: "/"}))
			return err
		},
	}
	for name, call := range calls {
		if got := connect.CodeOf(call()); got != connect.CodeFailedPrecondition {
			t.Errorf("%s on paused sandbox: %v, want FailedPrecondition", name, got)
		}
	}
	resp, err := lr.http.Get(lr.url + "/sandboxes/" + sid + "/files?path=/etc/hostname")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("file read on paused sandbox: %d, want 409", resp.StatusCode)
	}
}

func TestFileRoutesAndRPCs(t *testing.T) {
	t.Parallel()
	lr := newLiveRig(t)
	sid := lr.create(t)
	ctx := context.Background()
	c := lr.client
	dir := t.TempDir()
	base := lr.url + "/sandboxes/" + sid + "/files?path="

	// Upload 8 MiB without a length (chunked), download it, compare.
	data := bytes.Repeat([]byte("0123456789abcdef"), 512<<10)
	target := filepath.Join(dir, "sub", "blob")
	req, err := http.NewRequest(http.MethodPut, base+url.QueryEscape(target), io.MultiReader(bytes.NewReader(data)) /* hides the length */)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := lr.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("upload: %d", resp.StatusCode)
	}
	resp, err = lr.http.Get(base + url.QueryEscape(target))
	if err != nil {
		t.Fatal(err)
	}
	if resp.ContentLength != int64(len(data)) {
		t.Errorf("download length %d, want %d (sent uncompressed, with its length)", resp.ContentLength, len(data))
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || n != int64(len(data)) || !bytes.Equal(h.Sum(nil), sha(data)) {
		t.Fatalf("download: status %d, %d bytes, err %v", resp.StatusCode, n, err)
	}

	resp, err = lr.http.Get(base + url.QueryEscape(filepath.Join(dir, "missing")))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `"code":"not_found"`) {
		t.Errorf("missing file: %d %s", resp.StatusCode, body)
	}

	if _, err := c.MakeDir(ctx, connect.NewRequest(&hostagentv1.MakeDirRequest{SandboxId: sid, Path: filepath.Join(dir, "a", "b")})); err != nil {
		t.Fatal(err)
	}
	l, err := c.ListDir(ctx, connect.NewRequest(&hostagentv1.ListDirRequest{SandboxId: sid, Path: dir, Depth: 2}))
	if err != nil {
		t.Fatal(err)
	}
	paths := map[string]hostagentv1.FileType{}
	for _, e := range l.Msg.GetEntries() {
		paths[e.GetPath()] = e.GetType()
	}
	for p, typ := range map[string]hostagentv1.FileType{
		filepath.Join(dir, "a"): hostagentv1.FileType_FILE_TYPE_DIRECTORY, filepath.Join(dir, "a", "b"): hostagentv1.FileType_FILE_TYPE_DIRECTORY,
		filepath.Join(dir, "sub", "blob"): hostagentv1.FileType_FILE_TYPE_FILE,
	} {
		if paths[p] != typ {
			t.Errorf("list: %s is %v, want %v (all: %v)", p, paths[p], typ, paths)
		}
	}
	st, err := c.StatPath(ctx, connect.NewRequest(&hostagentv1.StatPathRequest{SandboxId: sid, Path: target}))
	if err != nil || st.Msg.GetEntry().GetSize() != int64(len(data)) {
		t.Fatalf("stat: %v %v", st, err)
	}
	if _, err := c.RemovePath(ctx, connect.NewRequest(&hostagentv1.RemovePathRequest{SandboxId: sid, Path: filepath.Join(dir, "sub")})); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after remove: %v", err)
	}
	_, err = c.StatPath(ctx, connect.NewRequest(&hostagentv1.StatPathRequest{SandboxId: sid, Path: target}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("stat of removed: %v", err)
	}
	_, err = c.ListDir(ctx, connect.NewRequest(&hostagentv1.ListDirRequest{SandboxId: sid, Path: dir, Depth: maxListDepth + 1}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("list too deep: %v", err)
	}
}

func sha(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}
