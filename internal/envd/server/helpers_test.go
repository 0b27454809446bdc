package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/wrenn/wrenn/proto/envd/process"
	"github.com/wrenn/wrenn/proto/envd/process/processconnect"
)

// testEnvd is an envd served on a loopback port for one test.
type testEnvd struct {
	srv *Server
	url string
}

func startEnvd(t testing.TB, opts Options) *testEnvd {
	t.Helper()
	if opts.ShutdownTimeout == 0 {
		opts.ShutdownTimeout = 5 * time.Second
	}
	srv := New(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		pids := srv.procs.List()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
		// Nothing the test started may outlive the server.
		for _, p := range pids {
			if err := syscall.Kill(p.PID, 0); err == nil {
				t.Errorf("process %d (%s) still alive after shutdown", p.PID, p.Cmd)
			}
		}
		if left := srv.procs.List(); len(left) != 0 {
			t.Errorf("%d processes still tracked after shutdown", len(left))
		}
		srv.watchers.mu.Lock()
		if n := len(srv.watchers.byID); n != 0 {
			t.Errorf("%d watchers left after shutdown", n)
		}
		srv.watchers.mu.Unlock()
	})
	return &testEnvd{srv: srv, url: "http://" + ln.Addr().String()}
}

// protocols are the wire variants envd must serve.
var protocols = []struct {
	name   string
	client func(url string) processconnect.ProcessClient
}{
	{"connect-json-http1", func(url string) processconnect.ProcessClient {
		return processconnect.NewProcessClient(http1Client(), url, connect.WithProtoJSON())
	}},
	{"connect-binary-http1", func(url string) processconnect.ProcessClient {
		return processconnect.NewProcessClient(http1Client(), url)
	}},
	{"grpc-h2c", func(url string) processconnect.ProcessClient {
		return processconnect.NewProcessClient(h2cClient(), url, connect.WithGRPC())
	}},
	{"grpc-web-http1", func(url string) processconnect.ProcessClient {
		return processconnect.NewProcessClient(http1Client(), url, connect.WithGRPCWeb())
	}},
	{"connect-json-h2c", func(url string) processconnect.ProcessClient {
		return processconnect.NewProcessClient(h2cClient(), url, connect.WithProtoJSON())
	}},
}

func http1Client() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: false, MaxIdleConnsPerHost: 16}}
}

func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}}
}

func (e *testEnvd) client() processconnect.ProcessClient {
	return protocols[0].client(e.url)
}

// result is everything one process stream delivered.
type result struct {
	pid        uint32
	stdout     bytes.Buffer
	stderr     bytes.Buffer
	pty        bytes.Buffer
	end        *pb.ProcessEvent_EndEvent
	keepalives int
}

// collect reads a Start or Connect stream to its end; startedPID is the pid
// of a start event the caller already read.
func collect[T interface{ GetEvent() *pb.ProcessEvent }](t *testing.T, s interface {
	Receive() bool
	Msg() T
	Err() error
	Close() error
}, startedPID ...uint32) *result {
	t.Helper()
	defer s.Close()
	r := &result{}
	if len(startedPID) > 0 {
		r.pid = startedPID[0]
	}
	for s.Receive() {
		r.add(t, s.Msg().GetEvent())
	}
	if err := s.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	if r.end == nil {
		t.Fatalf("stream ended without an end event (stdout %q, stderr %q)", r.stdout.String(), r.stderr.String())
	}
	return r
}

func (r *result) add(t *testing.T, ev *pb.ProcessEvent) {
	t.Helper()
	switch e := ev.GetEvent().(type) {
	case *pb.ProcessEvent_Start:
		if r.pid != 0 {
			t.Fatalf("second start event")
		}
		r.pid = e.Start.GetPid()
	case *pb.ProcessEvent_Data:
		if r.pid == 0 {
			t.Fatalf("data before the start event")
		}
		switch o := e.Data.GetOutput().(type) {
		case *pb.ProcessEvent_DataEvent_Stdout:
			r.stdout.Write(o.Stdout)
		case *pb.ProcessEvent_DataEvent_Stderr:
			r.stderr.Write(o.Stderr)
		case *pb.ProcessEvent_DataEvent_Pty:
			r.pty.Write(o.Pty)
		}
	case *pb.ProcessEvent_End:
		if r.end != nil {
			t.Fatalf("second end event")
		}
		r.end = e.End
	case *pb.ProcessEvent_Keepalive:
		r.keepalives++
	default:
		t.Fatalf("unexpected event %v", ev)
	}
}

func startReq(cmd string, args ...string) *connect.Request[pb.StartRequest] {
	return connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: cmd, Args: args}})
}

func run(t *testing.T, c processconnect.ProcessClient, req *connect.Request[pb.StartRequest]) *result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := c.Start(ctx, req)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return collect(t, s)
}

// firstEvent reads until the start event and returns the pid.
func firstEvent[T interface{ GetEvent() *pb.ProcessEvent }](t *testing.T, s interface {
	Receive() bool
	Msg() T
	Err() error
}) uint32 {
	t.Helper()
	if !s.Receive() {
		t.Fatalf("no start event: %v", s.Err())
	}
	st := s.Msg().GetEvent().GetStart()
	if st == nil {
		t.Fatalf("first event is %v, want start", s.Msg().GetEvent())
	}
	return st.GetPid()
}

func wantCode(t *testing.T, err error, code connect.Code, mentions ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", code)
	}
	if got := connect.CodeOf(err); got != code {
		t.Fatalf("error %v has code %v, want %v", err, got, code)
	}
	for _, m := range mentions {
		if !strings.Contains(err.Error(), m) {
			t.Fatalf("error %q does not mention %q", err, m)
		}
	}
}

func sel(pid uint32) *pb.ProcessSelector {
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
}

func tagSel(tag string) *pb.ProcessSelector {
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: tag}}
}

// waitGone polls until no process has pid, or fails.
func waitGone(t *testing.T, e *testEnvd, pid uint32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := e.srv.procs.ByPID(int(pid)); err != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("process %d still tracked", pid)
}

func httpDo(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set(AccessTokenHeader, token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("read body: %v", err)
	}
	return resp.StatusCode, string(b)
}
