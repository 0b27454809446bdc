package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/validate"
)

// maxListDepth bounds GET files/list's depth (the agent's own limit).
const maxListDepth = 16

func (a *API) maxUpload() int64 {
	if a.d.MaxUploadBytes > 0 {
		return a.d.MaxUploadBytes
	}
	return DefaultMaxUploadBytes
}

// downloadFile is GET /v1/sandboxes/{id}/files?path=: the file's bytes,
// streamed from the sandbox.
func (a *API) downloadFile(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	if err := validate.SandboxPath("path", p); err != nil {
		a.fail(w, r, err)
		return
	}
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	body, size, err := agent.ReadFile(r.Context(), sb.ID, p, r.URL.Query().Get("user"))
	if err != nil {
		a.fail(w, r, insideError(err))
		return
	}
	defer body.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(p)}))
	h.Set("Cache-Control", "no-store")
	if size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, body); err != nil {
		// The status is sent; a short body (and its Content-Length) is
		// all the client can be told.
		a.reqLog(r).Info("download cut short", "sandbox_id", sb.ID, "err", err)
	}
}

// uploadFile is PUT /v1/sandboxes/{id}/files?path=: the raw body becomes the
// file, streamed to the sandbox, creating parent directories.
func (a *API) uploadFile(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	if err := validate.SandboxPath("path", p); err != nil {
		a.fail(w, r, err)
		return
	}
	limit := a.maxUpload()
	if r.ContentLength > limit {
		a.fail(w, r, tooLarge(limit))
		return
	}
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	body := &limitedBody{r: http.MaxBytesReader(w, r.Body, limit)}
	err = agent.WriteFile(r.Context(), sb.ID, p, r.URL.Query().Get("user"), body, r.ContentLength)
	// The transport may not hand the body's error back, so the reader
	// remembers that it hit the limit.
	if body.over.Load() {
		a.fail(w, r, tooLarge(limit))
		return
	}
	if err != nil {
		a.fail(w, r, insideError(err))
		return
	}
	// Describe what was written, as a stat would.
	entry, err := agent.Stat(context.WithoutCancel(r.Context()), sb.ID, p, r.URL.Query().Get("user"))
	if err != nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, http.StatusCreated, entry)
}

// limitedBody records whether its MaxBytesReader refused to read further.
type limitedBody struct {
	r    io.Reader
	over atomic.Bool
}

func (l *limitedBody) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		l.over.Store(true)
	}
	return n, err
}

func tooLarge(limit int64) *Error {
	return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge, Message: fmt.Sprintf("the upload is larger than the %d-byte limit", limit)}
}

// removeFile is DELETE /v1/sandboxes/{id}/files?path=.
func (a *API) removeFile(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	if err := validate.SandboxPath("path", p); err != nil {
		a.fail(w, r, err)
		return
	}
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := agent.Remove(r.Context(), sb.ID, p, r.URL.Query().Get("user")); err != nil {
		a.fail(w, r, insideError(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// listFiles is GET /v1/sandboxes/{id}/files/list?path=&depth=.
func (a *API) listFiles(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p := q.Get("path")
	if err := validate.SandboxPath("path", p); err != nil {
		a.fail(w, r, err)
		return
	}
	depth := uint64(1)
	if v := q.Get("depth"); v != "" {
		var err error
		depth, err = strconv.ParseUint(v, 10, 32)
		if err != nil || depth < 1 || depth > maxListDepth {
			a.fail(w, r, invalid("depth", "must be an integer between 1 and %d, got %q", maxListDepth, v))
			return
		}
	}
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	entries, err := agent.ListDir(r.Context(), sb.ID, p, q.Get("user"), uint32(depth))
	if err != nil {
		a.fail(w, r, insideError(err))
		return
	}
	if entries == nil {
		entries = []hostclient.Entry{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": entries})
}

// statFile is GET /v1/sandboxes/{id}/files/stat?path=.
func (a *API) statFile(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	if err := validate.SandboxPath("path", p); err != nil {
		a.fail(w, r, err)
		return
	}
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	entry, err := agent.Stat(r.Context(), sb.ID, p, r.URL.Query().Get("user"))
	if err != nil {
		a.fail(w, r, insideError(err))
		return
	}
	writeJSON(w, http.StatusOK, entry)
}

type mkdirRequest struct {
	Path string `json:"path"`
	User string `json:"user"`
}

// makeDir is POST /v1/sandboxes/{id}/files/mkdir {"path"}: the directory
// and its parents.
func (a *API) makeDir(w http.ResponseWriter, r *http.Request) {
	var req mkdirRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := validate.SandboxPath("path", req.Path); err != nil {
		a.fail(w, r, err)
		return
	}
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	entry, err := agent.MakeDir(r.Context(), sb.ID, req.Path, req.User)
	if err != nil {
		a.fail(w, r, insideError(err))
		return
	}
	writeJSON(w, http.StatusCreated, entry)
}

// sandboxMetrics is GET /v1/sandboxes/{id}/metrics?since=RFC3339: what the
// host flushed before the sandbox paused or stopped, followed, while it runs
// or is paused, by what the host's ring took after that. So a stopped
// sandbox's history stays readable, and so does a paused one's after its
// agent restarted. It does not count as activity, so a dashboard polling it
// never keeps a sandbox awake.
func (a *API) sandboxMetrics(w http.ResponseWriter, r *http.Request) {
	since, err := queryTime(r, "since")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	until, err := queryTime(r, "until")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if !until.IsZero() && !until.After(since) {
		a.fail(w, r, invalid("until", "must be after since (%s), got %s", since.Format(time.RFC3339Nano), until.Format(time.RFC3339Nano)))
		return
	}
	sb, err := a.loadSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	samples, err := a.storedMetrics(r, sb.ID, since)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if sb.Status == "running" || sb.Status == "paused" {
		after := since
		if n := len(samples); n > 0 && samples[n-1].Time.After(after) {
			after = samples[n-1].Time
		}
		agent, err := a.hostAgent(r.Context(), sb)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		live, err := agent.SandboxMetrics(r.Context(), sb.ID, after)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		samples = append(samples, live...)
	}
	if !until.IsZero() {
		// Oldest first: keep those up to until.
		n := 0
		for n < len(samples) && !samples[n].Time.After(until) {
			n++
		}
		samples = samples[:n]
	}
	writeJSON(w, http.StatusOK, map[string]any{"samples": samples})
}

// queryTime reads an optional RFC 3339 time from the query.
func queryTime(r *http.Request, name string) (time.Time, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, invalid(name, "must be an RFC 3339 time such as 2026-01-02T15:04:05Z, got %q", v)
	}
	return t, nil
}
