package hostclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
)

func toProcessRequest(req ProcessRequest) *hostagentv1.StartProcessRequest {
	out := &hostagentv1.StartProcessRequest{
		SandboxId: req.SandboxID, Cmd: req.Cmd, Args: req.Args, Envs: req.Env, Cwd: req.Cwd,
		User: req.User, Tag: req.Tag, Stdin: req.Stdin,
	}
	if req.PTY != nil {
		out.Pty = &hostagentv1.PtySize{Cols: req.PTY.Cols, Rows: req.PTY.Rows}
	}
	return out
}

func toSelector(p Selector) *hostagentv1.ProcessSelector {
	if p.PID != 0 {
		return &hostagentv1.ProcessSelector{Selector: &hostagentv1.ProcessSelector_Pid{Pid: p.PID}}
	}
	return &hostagentv1.ProcessSelector{Selector: &hostagentv1.ProcessSelector_Tag{Tag: p.Tag}}
}

// connectStream adapts a Connect server stream of process events.
type connectStream struct {
	op    string
	s     *connect.ServerStreamForClient[hostagentv1.ProcessEvent]
	ended bool
}

func (c *connectStream) Recv() (ProcessEvent, error) {
	if c.ended {
		return ProcessEvent{}, io.EOF
	}
	if !c.s.Receive() {
		if err := c.s.Err(); err != nil {
			return ProcessEvent{}, classify(c.op, err)
		}
		return ProcessEvent{}, &Error{Op: c.op, Class: ErrUnavailable, Err: ErrStreamCut}
	}
	ev := fromProcessEvent(c.s.Msg())
	if ev.Kind == EventEnd {
		c.ended = true
	}
	return ev, nil
}

func (c *connectStream) Close() error { return c.s.Close() }

func fromProcessEvent(ev *hostagentv1.ProcessEvent) ProcessEvent {
	switch e := ev.GetEvent().(type) {
	case *hostagentv1.ProcessEvent_Start_:
		return ProcessEvent{Kind: EventStart, PID: e.Start.GetPid()}
	case *hostagentv1.ProcessEvent_Stdout:
		return ProcessEvent{Kind: EventStdout, Data: e.Stdout}
	case *hostagentv1.ProcessEvent_Stderr:
		return ProcessEvent{Kind: EventStderr, Data: e.Stderr}
	case *hostagentv1.ProcessEvent_Pty:
		return ProcessEvent{Kind: EventPTY, Data: e.Pty}
	case *hostagentv1.ProcessEvent_End_:
		return ProcessEvent{Kind: EventEnd, ExitCode: int(e.End.GetExitCode()), Exited: e.End.GetExited(), Status: e.End.GetStatus(), Error: e.End.GetError()}
	}
	return ProcessEvent{}
}

// openStream waits for the stream's first message so that refusals
// (unknown sandbox, wrong state) surface as the call's error.
func openStream(op string, s *connect.ServerStreamForClient[hostagentv1.ProcessEvent], err error) (ProcessStream, error) {
	if err != nil {
		return nil, classify(op, err)
	}
	cs := &connectStream{op: op, s: s}
	first, err := cs.Recv()
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	return &primedStream{connectStream: cs, first: &first}, nil
}

// primedStream hands out the event openStream already read.
type primedStream struct {
	*connectStream
	first *ProcessEvent
}

func (p *primedStream) Recv() (ProcessEvent, error) {
	if ev := p.first; ev != nil {
		p.first = nil
		return *ev, nil
	}
	return p.connectStream.Recv()
}

func (a *connectAgent) StartProcess(ctx context.Context, req ProcessRequest) (ProcessStream, error) {
	s, err := a.rpc.StartProcess(ctx, connect.NewRequest(toProcessRequest(req)))
	return openStream("start process", s, err)
}

func (a *connectAgent) StartBackground(ctx context.Context, req ProcessRequest) (ProcessInfo, error) {
	res, err := a.rpc.StartBackground(ctx, connect.NewRequest(toProcessRequest(req)))
	if err != nil {
		return ProcessInfo{}, classify("start background process", err)
	}
	return ProcessInfo{PID: res.Msg.GetPid(), Tag: res.Msg.GetTag(), Cmd: req.Cmd, Args: req.Args, Cwd: req.Cwd}, nil
}

func (a *connectAgent) ListProcesses(ctx context.Context, sandboxID string) ([]ProcessInfo, error) {
	res, err := a.rpc.ListProcesses(ctx, connect.NewRequest(&hostagentv1.ListProcessesRequest{SandboxId: sandboxID}))
	if err != nil {
		return nil, classify("list processes", err)
	}
	out := make([]ProcessInfo, 0, len(res.Msg.GetProcesses()))
	for _, p := range res.Msg.GetProcesses() {
		out = append(out, ProcessInfo{PID: p.GetPid(), Tag: p.GetTag(), Cmd: p.GetCmd(), Args: p.GetArgs(), Cwd: p.GetCwd()})
	}
	return out, nil
}

func (a *connectAgent) AttachProcess(ctx context.Context, sandboxID string, p Selector) (ProcessStream, error) {
	s, err := a.rpc.AttachProcess(ctx, connect.NewRequest(&hostagentv1.AttachProcessRequest{SandboxId: sandboxID, Process: toSelector(p)}))
	return openStream("attach to process", s, err)
}

func (a *connectAgent) SignalProcess(ctx context.Context, sandboxID string, p Selector, sig Signal) error {
	var s hostagentv1.Signal
	switch sig {
	case SignalTerm:
		s = hostagentv1.Signal_SIGNAL_SIGTERM
	case SignalKill:
		s = hostagentv1.Signal_SIGNAL_SIGKILL
	default:
		return &Error{Op: "signal process", Class: ErrInvalid, Message: fmt.Sprintf("signal %q is not SIGTERM or SIGKILL", sig)}
	}
	_, err := a.rpc.SignalProcess(ctx, connect.NewRequest(&hostagentv1.SignalProcessRequest{SandboxId: sandboxID, Process: toSelector(p), Signal: s}))
	if err != nil {
		return classify("signal process", err)
	}
	return nil
}

func (a *connectAgent) SendInput(ctx context.Context, sandboxID string, p Selector, data []byte, pty bool) error {
	_, err := a.rpc.SendInput(ctx, connect.NewRequest(&hostagentv1.SendInputRequest{SandboxId: sandboxID, Process: toSelector(p), Data: data, Pty: pty}))
	if err != nil {
		return classify("send input", err)
	}
	return nil
}

func (a *connectAgent) CloseStdin(ctx context.Context, sandboxID string, p Selector) error {
	if _, err := a.rpc.CloseStdin(ctx, connect.NewRequest(&hostagentv1.CloseStdinRequest{SandboxId: sandboxID, Process: toSelector(p)})); err != nil {
		return classify("close stdin", err)
	}
	return nil
}

func (a *connectAgent) ResizePTY(ctx context.Context, sandboxID string, p Selector, cols, rows uint32) error {
	_, err := a.rpc.ResizePty(ctx, connect.NewRequest(&hostagentv1.ResizePtyRequest{
		SandboxId: sandboxID, Process: toSelector(p), Size: &hostagentv1.PtySize{Cols: cols, Rows: rows},
	}))
	if err != nil {
		return classify("resize terminal", err)
	}
	return nil
}

func (a *connectAgent) filesURL(sandboxID, path, user string) string {
	q := url.Values{"path": {path}}
	if user != "" {
		q.Set("user", user)
	}
	return a.address + "/sandboxes/" + url.PathEscape(sandboxID) + "/files?" + q.Encode()
}

// httpError turns a failed agent HTTP answer into an *Error classified like
// the RPC it stands for.
func httpError(op string, resp *http.Response) error {
	var body struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<10))
	var code connect.Code
	if json.Unmarshal(raw, &body) != nil || code.UnmarshalText([]byte(body.Code)) != nil {
		code = connect.CodeUnknown
		if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusBadGateway {
			code = connect.CodeUnavailable
		}
		body.Message = fmt.Sprintf("agent answered %s", resp.Status)
	}
	if code == connect.CodeResourceExhausted {
		// The agent's file route says so for ENOSPC inside the sandbox.
		return &Error{Op: op, Class: ErrNoSpace, Message: body.Message}
	}
	return classify(op, connect.NewError(code, errors.New(body.Message)))
}

func (a *connectAgent) ReadFile(ctx context.Context, sandboxID, path, user string) (io.ReadCloser, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.filesURL(sandboxID, path, user), nil)
	if err != nil {
		return nil, 0, &Error{Op: "read file", Class: ErrInternal, Err: err}
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, 0, classify("read file", err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, 0, httpError("read file", resp)
	}
	return resp.Body, resp.ContentLength, nil
}

func (a *connectAgent) WriteFile(ctx context.Context, sandboxID, path, user string, r io.Reader, size int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, a.filesURL(sandboxID, path, user), r)
	if err != nil {
		return &Error{Op: "write file", Class: ErrInternal, Err: err}
	}
	req.ContentLength = size
	if size == 0 {
		req.Body = http.NoBody
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := a.http.Do(req)
	if err != nil {
		return classify("write file", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return httpError("write file", resp)
	}
	return nil
}

func fromEntry(e *hostagentv1.EntryInfo) Entry {
	out := Entry{
		Name: e.GetName(), Path: e.GetPath(), Size: e.GetSize(), Mode: e.GetMode(),
		Owner: e.GetOwner(), Group: e.GetGroup(), SymlinkTarget: e.GetSymlinkTarget(), Type: EntryOther,
	}
	if e.GetModifiedTime() != nil {
		out.ModifiedAt = e.GetModifiedTime().AsTime()
	}
	switch e.GetType() {
	case hostagentv1.FileType_FILE_TYPE_FILE:
		out.Type = EntryFile
	case hostagentv1.FileType_FILE_TYPE_DIRECTORY:
		out.Type = EntryDir
	case hostagentv1.FileType_FILE_TYPE_SYMLINK:
		out.Type = EntrySymlink
	}
	return out
}

func (a *connectAgent) ListDir(ctx context.Context, sandboxID, path, user string, depth uint32) ([]Entry, error) {
	res, err := a.rpc.ListDir(ctx, connect.NewRequest(&hostagentv1.ListDirRequest{SandboxId: sandboxID, Path: path, User: user, Depth: depth}))
	if err != nil {
		return nil, classify("list directory", err)
	}
	out := make([]Entry, 0, len(res.Msg.GetEntries()))
	for _, e := range res.Msg.GetEntries() {
		out = append(out, fromEntry(e))
	}
	return out, nil
}

func (a *connectAgent) MakeDir(ctx context.Context, sandboxID, path, user string) (Entry, error) {
	res, err := a.rpc.MakeDir(ctx, connect.NewRequest(&hostagentv1.MakeDirRequest{SandboxId: sandboxID, Path: path, User: user}))
	if err != nil {
		return Entry{}, classify("make directory", err)
	}
	return fromEntry(res.Msg.GetEntry()), nil
}

func (a *connectAgent) Remove(ctx context.Context, sandboxID, path, user string) error {
	if _, err := a.rpc.RemovePath(ctx, connect.NewRequest(&hostagentv1.RemovePathRequest{SandboxId: sandboxID, Path: path, User: user})); err != nil {
		return classify("remove path", err)
	}
	return nil
}

func (a *connectAgent) Stat(ctx context.Context, sandboxID, path, user string) (Entry, error) {
	res, err := a.rpc.StatPath(ctx, connect.NewRequest(&hostagentv1.StatPathRequest{SandboxId: sandboxID, Path: path, User: user}))
	if err != nil {
		return Entry{}, classify("stat path", err)
	}
	return fromEntry(res.Msg.GetEntry()), nil
}

func (a *connectAgent) SandboxMetrics(ctx context.Context, sandboxID string, since time.Time) ([]MetricSample, error) {
	req := &hostagentv1.GetSandboxMetricsRequest{SandboxId: sandboxID}
	if !since.IsZero() {
		req.Since = timestamppb.New(since)
	}
	res, err := a.rpc.GetSandboxMetrics(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, classify("get sandbox metrics", err)
	}
	out := make([]MetricSample, 0, len(res.Msg.GetSamples()))
	for _, s := range res.Msg.GetSamples() {
		out = append(out, MetricSample{Time: s.GetTime().AsTime(), CPUPercent: s.GetCpuPercent(), MemoryBytes: s.GetMemoryBytes(), DiskBytes: s.GetDiskBytes()})
	}
	return out, nil
}
