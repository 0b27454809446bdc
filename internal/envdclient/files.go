package envdclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/proto/envd/filesystem"
	"github.com/wrenn/wrenn/proto/envd/filesystem/filesystemconnect"
)

// FileError is a refused /files request: envd's HTTP status and message.
// Status tells the caller's mistakes (400 bad path, 404 missing, 403 not
// allowed, 507 disk full) from envd's own failures (5xx).
type FileError struct {
	Status  int
	Message string
}

func (e *FileError) Error() string {
	return fmt.Sprintf("envd answered %d: %s", e.Status, e.Message)
}

// fs returns a Filesystem client acting as user ("" is envd's default).
// Clients are cheap: they share c's HTTP client and its pooled transport.
func (c *Client) fs(user string) filesystemconnect.FilesystemClient {
	opts := []connect.ClientOption{connect.WithInterceptors(tokenHeader(c.token))}
	if user != "" {
		opts = append(opts, connect.WithInterceptors(userHeader(user)))
	}
	return filesystemconnect.NewFilesystemClient(c.http, c.base, opts...)
}

// Stat describes one path.
func (c *Client) Stat(ctx context.Context, user, path string) (*filesystem.EntryInfo, error) {
	res, err := c.fs(user).Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: path}))
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	return res.Msg.GetEntry(), nil
}

// ListDir lists a directory to depth levels (0 means 1).
func (c *Client) ListDir(ctx context.Context, user, path string, depth uint32) ([]*filesystem.EntryInfo, error) {
	res, err := c.fs(user).ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: path, Depth: depth}))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", path, err)
	}
	return res.Msg.GetEntries(), nil
}

// MakeDir creates a directory and its parents.
func (c *Client) MakeDir(ctx context.Context, user, path string) (*filesystem.EntryInfo, error) {
	res, err := c.fs(user).MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: path}))
	if err != nil {
		return nil, fmt.Errorf("make directory %s: %w", path, err)
	}
	return res.Msg.GetEntry(), nil
}

// Remove deletes a file or a directory tree.
func (c *Client) Remove(ctx context.Context, user, path string) error {
	if _, err := c.fs(user).Remove(ctx, connect.NewRequest(&filesystem.RemoveRequest{Path: path})); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

func (c *Client) filesURL(user, path string) string {
	q := url.Values{"path": {path}}
	if user != "" {
		q.Set("username", user)
	}
	return c.base + "/files?" + q.Encode()
}

// ReadFile opens a file for streaming. The caller closes the body; size is
// the file's length, or -1 when envd did not say.
func (c *Client) ReadFile(ctx context.Context, user, path string) (body io.ReadCloser, size int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.filesURL(user, path), nil)
	if err != nil {
		return nil, 0, fmt.Errorf("build read of %s: %w", path, err)
	}
	c.authorize(req)
	// Plain bytes: otherwise the transport asks for gzip, envd spends the
	// sandbox's CPU compressing and the agent's decompressing, and the
	// length is lost.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, 0, fmt.Errorf("read %s: %w", path, fileError(resp))
	}
	return resp.Body, resp.ContentLength, nil
}

// WriteFile streams body into a file, creating parents and replacing what
// was there; size is the body's length, or -1 when unknown (chunked).
func (c *Client) WriteFile(ctx context.Context, user, path string, body io.Reader, size int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.filesURL(user, path), body)
	if err != nil {
		return fmt.Errorf("build write of %s: %w", path, err)
	}
	req.ContentLength = size
	if size == 0 {
		req.Body = http.NoBody
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	c.authorize(req)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("write %s: %w", path, fileError(resp))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return nil
}

func (c *Client) authorize(req *http.Request) {
	if c.token != "" {
		req.Header.Set("X-Access-Token", c.token)
	}
}

// fileError reads envd's {"code","message"} error body.
func fileError(resp *http.Response) error {
	var body struct {
		Message string `json:"message"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<10))
	if json.Unmarshal(raw, &body) != nil || body.Message == "" {
		body.Message = string(raw)
	}
	if body.Message == "" {
		body.Message = http.StatusText(resp.StatusCode) + " (" + strconv.Itoa(resp.StatusCode) + ")"
	}
	return &FileError{Status: resp.StatusCode, Message: body.Message}
}

// userHeader names the user a call acts as, the way envd's protocol does.
type userHeader string

func (u userHeader) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", basicUser(string(u)))
		return next(ctx, req)
	}
}

func (u userHeader) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", basicUser(string(u)))
		return conn
	}
}

func (u userHeader) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
