package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"
	"github.com/wrenn/wrenn/internal/hostclient"
)

// WebSocket sessions (exec stream, attach, PTY) speak JSON text messages:
// from the server {"type":"start","pid"}, {"type":"stdout"|"stderr"|"pty",
// "data":"<base64>"}, {"type":"exit","exit_code","exited"} and
// {"type":"error","code","message"}; from the client {"type":"stdin",
// "data":"<base64>"}, {"type":"close_stdin"} and {"type":"signal",
// "signal":"SIGTERM"}. A PTY session carries terminal bytes as binary
// frames both ways instead, and takes {"type":"resize","cols","rows"} and
// {"type":"kill"}.

// wsReadLimit bounds one client message (a stdin chunk, base64).
const wsReadLimit = 4 << 20

// wsMessage is a client's control message.
type wsMessage struct {
	Type   string `json:"type"`
	Data   string `json:"data"`
	Signal string `json:"signal"`
	Cols   uint32 `json:"cols"`
	Rows   uint32 `json:"rows"`
}

// execCommand is the first message of an exec stream.
type execCommand struct {
	Cmd  string            `json:"cmd"`
	Args *[]string         `json:"args"`
	Env  map[string]string `json:"env"`
	Cwd  string            `json:"cwd"`
	User string            `json:"user"`
	Tag  string            `json:"tag"`
	// Stdin keeps the command's stdin open for stdin messages until
	// close_stdin; absent means true.
	Stdin *bool `json:"stdin"`
}

// wsSession is one WebSocket relaying a process stream.
type wsSession struct {
	a     *API
	r     *http.Request
	c     *websocket.Conn
	agent hostclient.Agent
	sid   string
	sel   hostclient.Selector
	pty   bool
}

func (a *API) accept(w http.ResponseWriter, r *http.Request) (*websocket.Conn, error) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		// Accept has answered the request already.
		a.reqLog(r).Info("websocket handshake refused", "err", err)
		return nil, err
	}
	c.SetReadLimit(wsReadLimit)
	return c, nil
}

func (s *wsSession) send(ctx context.Context, v map[string]any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode websocket message: %w", err)
	}
	return s.c.Write(ctx, websocket.MessageText, b)
}

// failClose tells the client why the session ends and closes it.
func (s *wsSession) failClose(err error) {
	ae := toAPIError(insideError(err))
	if ae.Status >= 500 {
		s.a.reqLog(s.r).Warn("websocket session failed", "sandbox_id", s.sid, "err", err)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.r.Context()), 5*time.Second)
	defer cancel()
	_ = s.send(ctx, map[string]any{"type": "error", "code": ae.Code, "message": ae.Message})
	status := websocket.StatusInternalError
	if ae.Status < 500 {
		status = websocket.StatusPolicyViolation
	}
	_ = s.c.Close(status, truncate(ae.Message, 120))
}

// truncate keeps a close reason within the 123 bytes a close frame holds.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// relay runs a session: events of stream go to the client, the client's
// messages go to the process, until the process ends or either side
// leaves. Leaving never kills the process; it can be attached again.
func (s *wsSession) relay(ctx context.Context, stream hostclient.ProcessStream) {
	defer stream.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Hijacked connections are not the HTTP server's to drain: end the
	// session when the API closes its streams for shutdown.
	stop := context.AfterFunc(s.a.streams, cancel)
	defer stop()
	go func() {
		// The stream's Recv returns once ctx ends.
		defer cancel()
		s.readClient(ctx)
	}()
	for {
		ev, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				_ = s.c.CloseNow()
				return
			}
			s.failClose(err)
			return
		}
		var msg map[string]any
		switch ev.Kind {
		case hostclient.EventStart:
			s.sel = hostclient.Selector{PID: ev.PID}
			msg = map[string]any{"type": "start", "pid": ev.PID}
		case hostclient.EventStdout:
			msg = map[string]any{"type": "stdout", "data": base64.StdEncoding.EncodeToString(ev.Data)}
		case hostclient.EventStderr:
			msg = map[string]any{"type": "stderr", "data": base64.StdEncoding.EncodeToString(ev.Data)}
		case hostclient.EventPTY:
			if s.pty {
				if err := s.c.Write(ctx, websocket.MessageBinary, ev.Data); err != nil {
					return
				}
				continue
			}
			msg = map[string]any{"type": "pty", "data": base64.StdEncoding.EncodeToString(ev.Data)}
		case hostclient.EventEnd:
			end := map[string]any{"type": "exit", "exit_code": ev.ExitCode, "exited": ev.Exited}
			if ev.Error != "" {
				end["error"] = ev.Error
			}
			if err := s.send(ctx, end); err == nil {
				_ = s.c.Close(websocket.StatusNormalClosure, "process exited")
			}
			return
		default:
			continue
		}
		if err := s.send(ctx, msg); err != nil {
			return
		}
	}
}

// readClient applies the client's messages until it leaves or ctx ends. A
// refused message is answered with an error message; the session goes on.
func (s *wsSession) readClient(ctx context.Context) {
	for {
		typ, b, err := s.c.Read(ctx)
		if err != nil {
			return
		}
		// Agent calls get a deadline of their own: a stuck one must not
		// hold the reader forever.
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = s.apply(cctx, typ, b)
		cancel()
		if err != nil {
			ae := toAPIError(insideError(err))
			if s.send(ctx, map[string]any{"type": "error", "code": ae.Code, "message": ae.Message}) != nil {
				return
			}
		}
	}
}

func (s *wsSession) apply(ctx context.Context, typ websocket.MessageType, b []byte) error {
	if typ == websocket.MessageBinary {
		if !s.pty {
			return invalid("message", "binary frames are terminal input and only a PTY session takes them")
		}
		return s.agent.SendInput(ctx, s.sid, s.sel, b, true)
	}
	var m wsMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return invalid("message", "must be a JSON object with a type")
	}
	switch m.Type {
	case "stdin":
		data, err := base64.StdEncoding.DecodeString(m.Data)
		if err != nil {
			return invalid("data", "must be base64")
		}
		return s.agent.SendInput(ctx, s.sid, s.sel, data, s.pty)
	case "close_stdin":
		return s.agent.CloseStdin(ctx, s.sid, s.sel)
	case "signal":
		sig, err := parseSignal("signal", m.Signal)
		if err != nil {
			return err
		}
		return s.agent.SignalProcess(ctx, s.sid, s.sel, sig)
	case "kill":
		return s.agent.SignalProcess(ctx, s.sid, s.sel, hostclient.SignalKill)
	case "resize":
		if err := checkCells("cols", m.Cols); err != nil {
			return err
		}
		if err := checkCells("rows", m.Rows); err != nil {
			return err
		}
		return s.agent.ResizePTY(ctx, s.sid, s.sel, m.Cols, m.Rows)
	}
	return invalid("type", "unknown message type %q (stdin, close_stdin, signal, kill, resize)", m.Type)
}

// maxCells bounds a terminal dimension.
const maxCells = 4096

func checkCells(field string, v uint32) error {
	if v == 0 || v > maxCells {
		return invalid(field, "must be between 1 and %d, got %d", maxCells, v)
	}
	return nil
}

// readCommand reads and validates an exec stream's first message.
func readCommand(ctx context.Context, c *websocket.Conn) (execCommand, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		return execCommand{}, invalid("message", "the first message must be the command")
	}
	var cmd execCommand
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if typ != websocket.MessageText || dec.Decode(&cmd) != nil {
		return execCommand{}, invalid("message", "the first message must be a JSON command: {\"cmd\",\"args\",\"env\",\"cwd\",\"user\",\"tag\",\"stdin\"}")
	}
	if cmd.Cmd == "" {
		return execCommand{}, invalid("cmd", "is required")
	}
	if len(cmd.Tag) > maxTagLen {
		return execCommand{}, invalid("tag", "is longer than %d bytes", maxTagLen)
	}
	return cmd, nil
}

// execStream is GET /v1/sandboxes/{id}/exec/stream.
func (a *API) execStream(w http.ResponseWriter, r *http.Request) {
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	c, err := a.accept(w, r)
	if err != nil {
		return
	}
	s := &wsSession{a: a, r: r, c: c, agent: agent, sid: sb.ID}
	cmd, err := readCommand(r.Context(), c)
	if err != nil {
		s.failClose(err)
		return
	}
	name, args := cmd.Cmd, []string(nil)
	if cmd.Args == nil {
		name, args = "/bin/sh", []string{"-c", cmd.Cmd}
	} else {
		args = *cmd.Args
	}
	stream, err := agent.StartProcess(r.Context(), hostclient.ProcessRequest{
		SandboxID: sb.ID, Cmd: name, Args: args, Env: cmd.Env, Cwd: cmd.Cwd, User: cmd.User,
		Tag: cmd.Tag, Stdin: cmd.Stdin == nil || *cmd.Stdin,
	})
	if err != nil {
		s.failClose(err)
		return
	}
	s.relay(r.Context(), stream)
}

// attachProcess is GET /v1/sandboxes/{id}/processes/{pid}/attach.
func (a *API) attachProcess(w http.ResponseWriter, r *http.Request) {
	pid, err := parsePID(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	// Attach before the handshake, so an unknown pid is a plain 404.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stream, err := agent.AttachProcess(ctx, sb.ID, hostclient.Selector{PID: pid})
	if err != nil {
		a.fail(w, r, insideError(err))
		return
	}
	c, err := a.accept(w, r)
	if err != nil {
		_ = stream.Close()
		return
	}
	s := &wsSession{a: a, r: r, c: c, agent: agent, sid: sb.ID, sel: hostclient.Selector{PID: pid}}
	s.relay(ctx, stream)
}

// defaultShell starts the user's login shell; envd sets SHELL from the
// user's passwd entry.
var defaultShell = []string{"-c", `exec "${SHELL:-/bin/sh}" -l`}

// ptySession is GET /v1/sandboxes/{id}/pty?cols=&rows=&cmd=&user=.
func (a *API) ptySession(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	size := map[string]uint32{"cols": 80, "rows": 24}
	for _, k := range []string{"cols", "rows"} {
		if v := q.Get(k); v != "" {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || checkCells(k, uint32(n)) != nil {
				a.fail(w, r, invalid(k, "must be an integer between 1 and %d, got %q", maxCells, v))
				return
			}
			size[k] = uint32(n)
		}
	}
	args := defaultShell
	if cmd := q.Get("cmd"); cmd != "" {
		args = []string{"-c", cmd}
	}
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stream, err := agent.StartProcess(ctx, hostclient.ProcessRequest{
		SandboxID: sb.ID, Cmd: "/bin/sh", Args: args, User: q.Get("user"), Cwd: q.Get("cwd"),
		Env: map[string]string{"TERM": "xterm-256color"},
		PTY: &hostclient.PTYSize{Cols: size["cols"], Rows: size["rows"]},
	})
	if err != nil {
		a.fail(w, r, insideError(err))
		return
	}
	pid, err := startPID(stream)
	if err != nil {
		_ = stream.Close()
		a.fail(w, r, err)
		return
	}
	c, err := a.accept(w, r)
	if err != nil {
		_ = stream.Close()
		// Nobody will ever see this terminal.
		_ = agent.SignalProcess(context.WithoutCancel(ctx), sb.ID, hostclient.Selector{PID: pid}, hostclient.SignalKill)
		return
	}
	s := &wsSession{a: a, r: r, c: c, agent: agent, sid: sb.ID, pty: true, sel: hostclient.Selector{PID: pid}}
	if err := s.send(ctx, map[string]any{"type": "start", "pid": pid}); err != nil {
		_ = stream.Close()
		return
	}
	s.relay(ctx, stream)
}

// startPID reads a stream's first event, which names the process.
func startPID(stream hostclient.ProcessStream) (uint32, error) {
	ev, err := stream.Recv()
	if err != nil {
		return 0, insideError(err)
	}
	if ev.Kind != hostclient.EventStart {
		return 0, errors.New("the process stream did not start with the process's pid")
	}
	return ev.PID, nil
}
