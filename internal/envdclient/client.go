// Package envdclient is the host agent's client for the envd daemon inside a
// sandbox. Each sandbox gets its own Client over a shared, tuned transport:
// HTTP/1.1 only (one slow sandbox must not stall others on a multiplexed
// connection), pooled, and with a response-header timeout so a frozen sandbox
// fails a call instead of hanging it.
package envdclient

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/proto/envd/process"
	"github.com/wrenn/wrenn/proto/envd/process/processconnect"
)

// Port is envd's port inside every sandbox.
const Port = 49983

// MaxOutput caps each of stdout and stderr collected by Exec, so a command
// that prints without end cannot exhaust the agent's memory.
const MaxOutput = 16 << 20

// NewTransport returns the transport that envd clients share.
func NewTransport() *http.Transport {
	t := &http.Transport{
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	t.Protocols = new(http.Protocols)
	t.Protocols.SetHTTP1(true)
	return t
}

// Client talks to one sandbox's envd.
type Client struct {
	base    string
	token   string
	http    *http.Client
	process processconnect.ProcessClient
}

// New returns a client for the envd at ip, authenticating with token once
// envd has been initialised with it. An *http.Transport is cloned, so each
// sandbox's connections are its own and Close can end them: a kept-alive
// connection to a destroyed sandbox must not serve the next sandbox given
// the same address, which answers it with a reset (gVisor's network stack
// dies without closing its connections, so they stay in a shared pool).
func New(transport http.RoundTripper, ip net.IP, token string) *Client {
	if t, ok := transport.(*http.Transport); ok {
		transport = t.Clone()
	}
	base := "http://" + net.JoinHostPort(ip.String(), strconv.Itoa(Port))
	hc := &http.Client{Transport: transport}
	c := &Client{base: base, token: token, http: hc}
	c.process = processconnect.NewProcessClient(hc, base, connect.WithInterceptors(tokenHeader(token)))
	return c
}

// Close closes the client's idle connections; calls still running end on
// their own. Call it when the sandbox goes.
func (c *Client) Close() {
	c.http.CloseIdleConnections()
}

// Boot polling: envd usually listens a few milliseconds after its init
// starts, and until it does each attempt is a refused connect on a local
// veth (tens of microseconds), so the first bootFastFor are polled every
// bootFastEvery; a sandbox that takes longer is polled less and less often,
// up to bootSlowest. At a millisecond apart, envd waited 1.5 to 5 ms for
// its /init after it began to serve.
const (
	bootFastEvery = 250 * time.Microsecond
	bootFastFor   = 250 * time.Millisecond
	bootSlowest   = 50 * time.Millisecond
)

// bootAttemptTimeout is the first bound on one attempt of InitWhenUp,
// doubled after every attempt that runs out, up to bootAttemptMax. An
// attempt on the local veth is answered in well under a millisecond; one
// whose SYN was dropped (a veth raised moments ago drops traffic until the
// kernel attaches its queue) would otherwise wait a second for TCP to send
// it again.
const (
	bootAttemptTimeout = 5 * time.Millisecond
	bootAttemptMax     = time.Second
)

// InitWhenUp sends the boot's /init as soon as envd answers, retrying
// while the connection is refused or an attempt goes unanswered, and
// calling in for each attempt's body (so the clock it carries is current),
// until envd answers or ctx ends. It may be started before the sandbox's
// init is: nothing listens on the sandbox's address before envd does. An
// attempt given up on may still reach envd, so envd may see /init more than
// once; /init sets the same token, variables and defaults each time.
func (c *Client) InitWhenUp(ctx context.Context, in func() InitRequest) error {
	start := time.Now()
	delay, bound := bootFastEvery, bootAttemptTimeout
	for {
		attempt, cancel := context.WithTimeout(ctx, bound)
		err := c.Init(attempt, in())
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("wait for envd at %s: %w (last error: %w)", c.base, ctx.Err(), err)
		case errors.Is(err, context.DeadlineExceeded):
			// Unanswered: ask again at once, waiting longer.
			bound = min(2*bound, bootAttemptMax)
			continue
		case !errors.Is(err, syscall.ECONNREFUSED):
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for envd at %s: %w (last error: %w)", c.base, ctx.Err(), err)
		case <-time.After(delay):
		}
		if time.Since(start) > bootFastFor && delay < bootSlowest {
			delay = min(2*delay, bootSlowest)
		}
	}
}

// InitRequest is envd's POST /init body.
type InitRequest struct {
	AccessToken    string            `json:"accessToken,omitempty"`
	EnvVars        map[string]string `json:"envVars,omitempty"`
	DefaultUser    string            `json:"defaultUser,omitempty"`
	DefaultWorkdir string            `json:"defaultWorkdir,omitempty"`
	Timestamp      time.Time         `json:"timestamp"`
}

// Init sends the one /init round trip that follows boot and every resume:
// access token, environment, defaults and the host's clock.
func (c *Client) Init(ctx context.Context, in InitRequest) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("encode init: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/init", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build init request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("X-Access-Token", c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("envd init: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("envd init answered %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// ExecRequest is one command to run to completion.
type ExecRequest struct {
	Cmd   string
	Args  []string
	Env   map[string]string
	Cwd   string
	User  string
	Stdin []byte
	// Timeout bounds the command; on expiry it is killed.
	Timeout time.Duration
}

// ExecResult is a finished command's collected output.
type ExecResult struct {
	Stdout, Stderr []byte
	ExitCode       int32
	TimedOut       bool
	Duration       time.Duration
}

// Exec runs a command through envd's process.Start stream and collects its
// output. Past the timeout the process is killed and TimedOut set.
func (c *Client) Exec(ctx context.Context, in ExecRequest) (*ExecResult, error) {
	start := time.Now()
	runCtx, cancel := context.WithTimeout(ctx, in.Timeout)
	defer cancel()

	cfg := &process.ProcessConfig{Cmd: in.Cmd, Args: in.Args, Envs: in.Env}
	if in.Cwd != "" {
		cfg.Cwd = &in.Cwd
	}
	wantStdin := len(in.Stdin) > 0
	req := connect.NewRequest(&process.StartRequest{Process: cfg, Stdin: &wantStdin})
	if in.User != "" {
		req.Header().Set("Authorization", basicUser(in.User))
	}
	stream, err := c.process.Start(runCtx, req)
	if err != nil {
		return nil, fmt.Errorf("start process: %w", err)
	}
	defer stream.Close()

	res := &ExecResult{}
	var pid uint32
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		switch {
		case ev.GetStart() != nil:
			pid = ev.GetStart().GetPid()
			if wantStdin {
				if err := c.sendStdin(runCtx, pid, in.Stdin); err != nil {
					c.kill(pid)
					return nil, err
				}
			}
		case ev.GetData() != nil:
			d := ev.GetData()
			res.Stdout = appendCapped(res.Stdout, d.GetStdout())
			res.Stderr = appendCapped(res.Stderr, d.GetStderr())
		case ev.GetEnd() != nil:
			end := ev.GetEnd()
			res.ExitCode = end.GetExitCode()
			res.Duration = time.Since(start)
			// Read on to the end-of-stream message: a response left unread
			// makes the transport close the connection, and the next call
			// would pay for a new one.
			for stream.Receive() {
			}
			return res, nil
		}
	}
	err = stream.Err()
	if runCtx.Err() != nil && ctx.Err() == nil {
		// Our own deadline passed: the process may still run inside.
		if pid != 0 {
			c.kill(pid)
		}
		res.TimedOut = true
		res.ExitCode = -1
		res.Duration = time.Since(start)
		return res, nil
	}
	if err == nil {
		err = errors.New("stream ended without an end event")
	}
	if pid != 0 {
		c.kill(pid)
	}
	return nil, fmt.Errorf("process %d: %w", pid, err)
}

func (c *Client) sendStdin(ctx context.Context, pid uint32, data []byte) error {
	sel := &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}}
	_, err := c.process.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{
		Process: sel,
		Input:   &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: data}},
	}))
	if err != nil {
		return fmt.Errorf("send stdin to process %d: %w", pid, err)
	}
	if _, err := c.process.CloseStdin(ctx, connect.NewRequest(&process.CloseStdinRequest{Process: sel})); err != nil {
		return fmt.Errorf("close stdin of process %d: %w", pid, err)
	}
	return nil
}

// kill sends SIGKILL with a short deadline of its own: it runs when the
// caller's context may already be done.
func (c *Client) kill(pid uint32) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = c.process.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{
		Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}},
		Signal:  process.Signal(syscall.SIGKILL),
	}))
}

func appendCapped(dst, src []byte) []byte {
	if room := MaxOutput - len(dst); room < len(src) {
		src = src[:max(room, 0)]
	}
	return append(dst, src...)
}

// basicUser is how envd's protocol names the user a call runs as.
func basicUser(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
}
