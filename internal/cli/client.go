package cli

// The REST client lives in internal/ rather than pkg/: enterprise modules
// extend the control plane in-process through pkg/cpextension and never call
// its REST API, and the API is young enough that promising a stable Go client
// would freeze it. A public SDK package can be cut from this one when the API
// settles.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wrenn/wrenn/pkg/service"
)

// Sandbox is the control plane's sandbox record as the REST API returns it.
type Sandbox = service.Sandbox

// Sandbox statuses the CLI and the local stack act on.
const (
	StatusStarting = "starting"
	StatusRunning  = "running"
	StatusStopping = "stopping"
	StatusStopped  = "stopped"
	StatusError    = "error"
)

// CreateSandboxRequest is the body of POST /v1/sandboxes; zero fields are
// left out so the control plane applies its defaults.
type CreateSandboxRequest struct {
	Template   string `json:"template"`
	VCPUs      int    `json:"vcpus,omitempty"`
	MemoryMB   int    `json:"memory_mb,omitempty"`
	TimeoutSec int    `json:"timeout_sec,omitempty"`
}

// ExecRequest is the body of POST /v1/sandboxes/{id}/exec. With no Args, Cmd
// is a shell line run through /bin/sh -c.
type ExecRequest struct {
	Cmd        string            `json:"cmd"`
	Args       []string          `json:"args,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Cwd        string            `json:"cwd,omitempty"`
	User       string            `json:"user,omitempty"`
	TimeoutSec int               `json:"timeout_sec,omitempty"`
}

// ExecResult is what a finished command left behind.
type ExecResult struct {
	Stdout     string `json:"stdout"`
	Stderr     string `json:"stderr"`
	ExitCode   int    `json:"exit_code"`
	TimedOut   bool   `json:"timed_out"`
	DurationMS int64  `json:"duration_ms"`
}

// Host is a host agent as the admin API lists it.
type Host struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Status string `json:"status"`
}

// HostStatusOnline is a host whose agent registered and heartbeats.
const HostStatusOnline = "online"

// HostRegistration is the answer to creating a host: the record and the
// one-time token its agent registers with.
type HostRegistration struct {
	Host              Host   `json:"host"`
	RegistrationToken string `json:"registration_token"`
}

// APIError is an error answer of the API ({"error":{"code","message"}}),
// with the HTTP status it came with.
type APIError struct {
	Status  int
	Code    string
	Message string
}

// Error returns the API's message, which is written for users.
func (e *APIError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("the API answered %d %s", e.Status, http.StatusText(e.Status))
	}
	return e.Message
}

// IsStatus reports whether err is an APIError with the given HTTP status.
func IsStatus(err error, status int) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == status
}

// Client calls the Wrenn REST API with one API key.
type Client struct {
	base *url.URL
	key  string
	hc   *http.Client
	// timeout bounds every call but exec, whose bound is its own timeout
	// plus this.
	timeout time.Duration
}

// NewClient returns a client for the API at baseURL. It has its own
// transport: connection and header timeouts are set, while a call's overall
// bound comes from its context, because an exec legitimately waits as long
// as its command runs.
func NewClient(baseURL, apiKey string) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("API URL %q is not an http(s) URL", baseURL)
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		MaxIdleConns:          4,
		IdleConnTimeout:       30 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &Client{base: u, key: apiKey, hc: &http.Client{Transport: tr}, timeout: 30 * time.Second}, nil
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// CreateSandbox asks for a new sandbox; it returns at once with the record
// in status starting.
func (c *Client) CreateSandbox(ctx context.Context, req CreateSandboxRequest) (Sandbox, error) {
	var sb Sandbox
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes", req, &sb, c.timeout)
	return sb, err
}

// GetSandbox returns one sandbox of the key's team.
func (c *Client) GetSandbox(ctx context.Context, id string) (Sandbox, error) {
	var sb Sandbox
	err := c.do(ctx, http.MethodGet, "/v1/sandboxes/"+url.PathEscape(id), nil, &sb, c.timeout)
	return sb, err
}

// ListSandboxes returns every sandbox of the key's team, newest first,
// following the API's pages.
func (c *Client) ListSandboxes(ctx context.Context) ([]Sandbox, error) {
	var all []Sandbox
	q := url.Values{"limit": {strconv.Itoa(service.MaxPageSize)}}
	for {
		var page service.SandboxPage
		if err := c.do(ctx, http.MethodGet, "/v1/sandboxes?"+q.Encode(), nil, &page, c.timeout); err != nil {
			return nil, err
		}
		all = append(all, page.Sandboxes...)
		if page.NextCursor == "" {
			return all, nil
		}
		q.Set("cursor", page.NextCursor)
	}
}

// Exec runs a command in a running sandbox and waits for it to finish.
func (c *Client) Exec(ctx context.Context, id string, req ExecRequest) (ExecResult, error) {
	var res ExecResult
	bound := c.timeout + time.Duration(req.TimeoutSec)*time.Second
	if req.TimeoutSec <= 0 {
		bound += 60 * time.Second // the API's default command timeout
	}
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes/"+url.PathEscape(id)+"/exec", req, &res, bound)
	return res, err
}

// DeleteSandbox asks for a sandbox to be destroyed; it returns once the
// control plane accepted that, before the sandbox is stopped.
func (c *Client) DeleteSandbox(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/sandboxes/"+url.PathEscape(id), nil, nil, c.timeout)
}

// CreateHost registers a host with the control plane (admin keys only) and
// returns the token its agent registers with.
func (c *Client) CreateHost(ctx context.Context, name string) (HostRegistration, error) {
	var reg HostRegistration
	err := c.do(ctx, http.MethodPost, "/v1/admin/hosts", map[string]string{"name": name}, &reg, c.timeout)
	return reg, err
}

// ListHosts returns every host (admin keys only).
func (c *Client) ListHosts(ctx context.Context) ([]Host, error) {
	var out struct {
		Hosts []Host `json:"hosts"`
	}
	err := c.do(ctx, http.MethodGet, "/v1/admin/hosts", nil, &out, c.timeout)
	return out.Hosts, err
}

// WaitSandbox polls a sandbox until done says it reached the wanted state, an
// error status, or the deadline. It returns the last record seen.
func (c *Client) WaitSandbox(ctx context.Context, id string, timeout time.Duration, done func(Sandbox) bool) (Sandbox, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(150 * time.Millisecond)
	defer tick.Stop()
	for {
		sb, err := c.GetSandbox(ctx, id)
		switch {
		case err == nil && done(sb):
			return sb, nil
		case err == nil && sb.Status == StatusError:
			msg := sb.Error
			if msg == "" {
				msg = "no reason given"
			}
			return sb, fmt.Errorf("sandbox %s failed: %s", id, msg)
		case err != nil && ctx.Err() == nil:
			var ae *APIError
			if errors.As(err, &ae) {
				return sb, err
			}
			// A transport hiccup: try again until the deadline.
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return sb, fmt.Errorf("wait for sandbox %s: %w", id, err)
			}
			return sb, fmt.Errorf("sandbox %s is still %s after %s", id, sb.Status, timeout)
		case <-tick.C:
		}
	}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any, bound time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	// A query (a list's page) rides after the path; JoinPath would escape it.
	path, query, _ := strings.Cut(path, "?")
	u := c.base.JoinPath(path)
	u.RawQuery = query
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return fmt.Errorf("build request %s %s: %w", method, path, err)
	}
	req.Header.Set("X-API-Key", c.key)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// url.Error repeats the method and URL; name them once.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("%s %s: %w", method, u.Redacted(), err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		ae := &APIError{Status: resp.StatusCode}
		var env struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(data, &env) == nil {
			ae.Code, ae.Message = env.Error.Code, env.Error.Message
		}
		return ae
	}
	if out == nil || len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode answer to %s %s: %w", method, path, err)
	}
	return nil
}
