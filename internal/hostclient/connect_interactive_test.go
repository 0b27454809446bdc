package hostclient

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
	"github.com/wrenn/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// interactiveAgent scripts the agent's streaming RPCs and file route.
type interactiveAgent struct {
	hostagentv1connect.UnimplementedHostAgentServiceHandler
	// cut ends StartProcess streams before their end event.
	cut bool
}

func (s *interactiveAgent) StartProcess(_ context.Context, r *connect.Request[hostagentv1.StartProcessRequest], st *connect.ServerStream[hostagentv1.ProcessEvent]) error {
	if r.Msg.GetSandboxId() == "sb-paused" {
		return connect.NewError(connect.CodeFailedPrecondition, errors.New("sandbox sb-paused is paused, not running"))
	}
	evs := []*hostagentv1.ProcessEvent{
		{Event: &hostagentv1.ProcessEvent_Start_{Start: &hostagentv1.ProcessEvent_Start{Pid: 42}}},
		{Event: &hostagentv1.ProcessEvent_Stdout{Stdout: []byte(r.Msg.GetCmd())}},
		{Event: &hostagentv1.ProcessEvent_Stderr{Stderr: []byte("e")}},
	}
	if !s.cut {
		evs = append(evs, &hostagentv1.ProcessEvent{Event: &hostagentv1.ProcessEvent_End_{End: &hostagentv1.ProcessEvent_End{ExitCode: 3, Exited: true}}})
	}
	for _, ev := range evs {
		if err := st.Send(ev); err != nil {
			return err
		}
	}
	return nil
}

func (s *interactiveAgent) GetSandboxMetrics(_ context.Context, r *connect.Request[hostagentv1.GetSandboxMetricsRequest]) (*connect.Response[hostagentv1.GetSandboxMetricsResponse], error) {
	at := r.Msg.GetSince().AsTime().Add(time.Second)
	return connect.NewResponse(&hostagentv1.GetSandboxMetricsResponse{Samples: []*hostagentv1.MetricSample{
		{Time: timestamppb.New(at), CpuPercent: 50, MemoryBytes: 7, DiskBytes: 9},
	}}), nil
}

func TestConnectInteractive(t *testing.T) {
	t.Parallel()
	ag := &interactiveAgent{}
	mux := http.NewServeMux()
	path, h := hostagentv1connect.NewHostAgentServiceHandler(ag)
	mux.Handle(path, h)
	mux.HandleFunc("GET /sandboxes/{id}/files", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("path") {
		case "/ok":
			_, _ = io.WriteString(w, "content of "+r.PathValue("id")+" as "+r.URL.Query().Get("user"))
		case "/missing":
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"code":"not_found","message":"open /missing: no such file"}`)
		default:
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, "<html>proxy error</html>")
		}
	})
	mux.HandleFunc("PUT /sandboxes/{id}/files", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusInsufficientStorage)
		_, _ = io.WriteString(w, `{"code":"resource_exhausted","message":"write: no space left on device"}`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	pool := NewPool(nil)
	t.Cleanup(pool.Close)
	a, err := pool.Agent("host-1", srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	st, err := a.StartProcess(ctx, ProcessRequest{SandboxID: "sb-1", Cmd: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []EventKind
	var last ProcessEvent
	for {
		ev, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, ev.Kind)
		last = ev
	}
	if len(kinds) != 4 || kinds[0] != EventStart || kinds[1] != EventStdout || kinds[3] != EventEnd || last.ExitCode != 3 || !last.Exited {
		t.Errorf("events %v, end %+v", kinds, last)
	}
	_ = st.Close()

	if _, err := a.StartProcess(ctx, ProcessRequest{SandboxID: "sb-paused", Cmd: "echo"}); !errors.Is(err, ErrConflict) {
		t.Errorf("paused: %v, want ErrConflict at open", err)
	}
	ag.cut = true
	st, err = a.StartProcess(ctx, ProcessRequest{SandboxID: "sb-1", Cmd: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Recv(); !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrStreamCut) {
		t.Errorf("cut stream: %v", err)
	}

	rc, _, err := a.ReadFile(ctx, "sb-1", "/ok", "wrenn-user")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "content of sb-1 as wrenn-user" {
		t.Errorf("read %q", b)
	}
	tests := []struct {
		name  string
		err   error
		class error
		msg   string
	}{
		{"missing file", func() error { _, _, err := a.ReadFile(ctx, "sb-1", "/missing", ""); return err }(), ErrNotFound, "no such file"},
		{"garbled answer", func() error { _, _, err := a.ReadFile(ctx, "sb-1", "/other", ""); return err }(), ErrUnavailable, "502"},
		{"disk full", a.WriteFile(ctx, "sb-1", "/x", "", strings.NewReader("data"), 4), ErrNoSpace, "no space"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var he *Error
			if !errors.Is(tt.err, tt.class) || !errors.As(tt.err, &he) || !strings.Contains(he.Error(), tt.msg) {
				t.Errorf("%v, want class %v mentioning %q", tt.err, tt.class, tt.msg)
			}
		})
	}

	since := time.Unix(1700000000, 0).UTC()
	ms, err := a.SandboxMetrics(ctx, "sb-1", since)
	if err != nil || len(ms) != 1 || !ms[0].Time.Equal(since.Add(time.Second)) || ms[0].CPUPercent != 50 || ms[0].DiskBytes != 9 {
		t.Errorf("metrics %+v %v", ms, err)
	}
}
