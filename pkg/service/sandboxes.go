// Package service is the control plane's sandbox service: the operations
// behind the REST routes, for an extension to call without going through
// HTTP. They validate their input, place, and change state exactly as the
// routes do (compare-and-set, events, background agent calls); the routes
// are thin wrappers around them.
//
// Errors: bad input is a *validate.FieldError, a sandbox the team does not
// own is ErrNotFound, an operation refused in the sandbox's state is
// ErrConflict (wrapped with the reason), no host with room is
// ErrNoCapacity. Anything else is an internal failure.
package service

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wrenn/wrenn/pkg/lifecycle"
	"github.com/wrenn/wrenn/pkg/validate"
)

// Errors of the service's operations; test with errors.Is.
var (
	ErrNotFound   = errors.New("not found")
	ErrConflict   = errors.New("conflict with the sandbox's state")
	ErrNoCapacity = errors.New("no host has room")
)

// Caller is who an operation acts for: the team whose sandboxes it may
// touch, and the actor named in events and the audit log ("api:<key id>",
// "session:<id>", or an extension's own name).
type Caller struct {
	TeamID string
	Actor  string
}

// Sandboxes is the sandbox lifecycle.
type Sandboxes interface {
	// Create validates req, places the sandbox on a host and records it as
	// starting; the host boots it in the background (watch its status, or
	// the event stream, for running or error).
	Create(ctx context.Context, c Caller, req CreateSandbox) (Created, error)
	Get(ctx context.Context, teamID, sandboxID string) (Sandbox, error)
	List(ctx context.Context, teamID string, q ListSandboxes) (SandboxPage, error)
	// Pause, Resume and Destroy start the operation and return once it is
	// recorded as under way (pausing, resuming, stopping); asking for one
	// already under way or done is not an error.
	Pause(ctx context.Context, c Caller, sandboxID string) error
	Resume(ctx context.Context, c Caller, sandboxID string) error
	Destroy(ctx context.Context, c Caller, sandboxID string) error
}

// Sandbox is a sandbox as the API shows it.
type Sandbox struct {
	ID            string            `json:"id"`
	Template      string            `json:"template"`
	Status        string            `json:"status"`
	VCPUs         int               `json:"vcpus"`
	MemoryMB      int               `json:"memory_mb"`
	DiskMB        int64             `json:"disk_mb"`
	TimeoutSec    int               `json:"timeout_sec"`
	Metadata      map[string]string `json:"metadata"`
	AllowInternet bool              `json:"allow_internet"`
	HostID        string            `json:"host_id"`
	CreatedAt     time.Time         `json:"created_at"`
	StartedAt     *time.Time        `json:"started_at"`
	StoppedAt     *time.Time        `json:"stopped_at"`
	Error         string            `json:"error,omitempty"`
	EnvdVersion   string            `json:"envd_version"`
}

// Created is the answer of Create: the sandbox, and a private sandbox's
// traffic token, shown this once.
type Created struct {
	Sandbox
	TrafficToken string `json:"traffic_token,omitempty"`
}

// Bounds and defaults of a sandbox's resources.
const (
	MinVCPUs, MaxVCPUs           = 1, 8
	MinMemoryMB, MaxMemoryMB     = 128, 16384
	MinDiskMB, MaxDiskMB         = 256, 1 << 20
	MinTimeoutSec, MaxTimeoutSec = 1, 86400

	DefaultVCPUs      = 1
	DefaultMemoryMB   = 512
	DefaultTimeoutSec = 300
)

// CreateSandbox is what a sandbox is created with (the body of POST
// /v1/sandboxes). Pointers tell "absent" (the default) from zero.
type CreateSandbox struct {
	Template   string `json:"template"`
	VCPUs      *int   `json:"vcpus"`
	MemoryMB   *int   `json:"memory_mb"`
	DiskMB     *int   `json:"disk_mb"` // 0 or absent: the host's default
	TimeoutSec *int   `json:"timeout_sec"`
	// Metadata is kept with the sandbox to find it by (List).
	Metadata map[string]string `json:"metadata"`
	// Env is every process's environment in the sandbox. It goes to the
	// host and is not stored by the control plane.
	Env map[string]string `json:"env"`
	// AllowInternet (default true) lets the sandbox reach the internet;
	// it never reaches the host's services or private ranges either way.
	AllowInternet *bool `json:"allow_internet"`
	// Private sandboxes need their traffic token on port traffic.
	Private bool `json:"private"`
}

// Resolved returns the request's values with defaults applied.
func (r CreateSandbox) Resolved() (vcpus, memoryMB, diskMB, timeoutSec int, allowInternet bool) {
	return orDefault(r.VCPUs, DefaultVCPUs), orDefault(r.MemoryMB, DefaultMemoryMB), orDefault(r.DiskMB, 0),
		orDefault(r.TimeoutSec, DefaultTimeoutSec), r.AllowInternet == nil || *r.AllowInternet
}

// Validate checks every field, naming the first that is wrong.
func (r CreateSandbox) Validate() error {
	if r.Template == "" {
		return validate.Errorf("template", "is required (for example \"minimal\")")
	}
	vcpus, mem, disk, timeout, _ := r.Resolved()
	if err := validate.Range("vcpus", vcpus, MinVCPUs, MaxVCPUs); err != nil {
		return err
	}
	if err := validate.Range("memory_mb", mem, MinMemoryMB, MaxMemoryMB); err != nil {
		return err
	}
	if disk != 0 && (disk < MinDiskMB || disk > MaxDiskMB) {
		return validate.Errorf("disk_mb", "must be 0 (the host's default) or between %d and %d, got %d", MinDiskMB, MaxDiskMB, disk)
	}
	if err := validate.Range("timeout_sec", timeout, MinTimeoutSec, MaxTimeoutSec); err != nil {
		return err
	}
	if err := validate.Metadata("metadata", r.Metadata); err != nil {
		return err
	}
	return validate.Env("env", r.Env)
}

func orDefault(p *int, def int) int {
	if p == nil {
		return def
	}
	return *p
}

// Page sizes of List.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// ListSandboxes selects a page of a team's sandboxes, newest first.
type ListSandboxes struct {
	// Statuses keeps sandboxes in any of these; none keeps all.
	Statuses []lifecycle.Status
	// Metadata keeps sandboxes whose metadata has every one of these pairs.
	Metadata map[string]string
	// Limit is the page size, 1..MaxPageSize; 0 means DefaultPageSize.
	Limit int
	// Cursor is the NextCursor of the previous page; empty starts from the
	// newest.
	Cursor string
}

// SandboxPage is one page of List. NextCursor is empty on the last page.
type SandboxPage struct {
	Sandboxes  []Sandbox `json:"sandboxes"`
	NextCursor string    `json:"next_cursor,omitempty"`
}

// ParseListQuery reads GET /v1/sandboxes's query: status=running,paused
// (or repeated), metadata=k1%3Dv1%26k2%3Dv2 (a URL-encoded query string
// of pairs, as E2B's API takes it), limit and cursor.
func ParseListQuery(q url.Values) (ListSandboxes, error) {
	var l ListSandboxes
	for _, v := range q["status"] {
		for _, s := range strings.Split(v, ",") {
			st, err := lifecycle.Parse(strings.TrimSpace(s))
			if err != nil {
				return l, validate.Errorf("status", "%v", err)
			}
			l.Statuses = append(l.Statuses, st)
		}
	}
	if v := q.Get("metadata"); v != "" {
		pairs, err := url.ParseQuery(v)
		if err != nil {
			return l, validate.Errorf("metadata", "must be URL-encoded key=value pairs joined by &: %v", err)
		}
		l.Metadata = make(map[string]string, len(pairs))
		for k, vs := range pairs {
			if len(vs) != 1 {
				return l, validate.Errorf("metadata", "key %q is given %d times; give each key once", k, len(vs))
			}
			l.Metadata[k] = vs[0]
		}
		if err := validate.Metadata("metadata", l.Metadata); err != nil {
			return l, err
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPageSize {
			return l, validate.Errorf("limit", "must be an integer from 1 to %d, got %q", MaxPageSize, v)
		}
		l.Limit = n
	}
	l.Cursor = q.Get("cursor")
	if _, _, err := DecodeCursor(l.Cursor); err != nil {
		return l, err
	}
	return l, nil
}

// EncodeCursor makes the cursor that continues after the sandbox created
// at createdAt (microseconds, as Postgres keeps it) with id sandboxID.
func EncodeCursor(createdAt time.Time, sandboxID string) string {
	b := binary.BigEndian.AppendUint64(nil, uint64(createdAt.UnixMicro()))
	return base64.RawURLEncoding.EncodeToString(append(b, sandboxID...))
}

// DecodeCursor reads a cursor of EncodeCursor; an empty one is the start.
func DecodeCursor(c string) (createdAt time.Time, sandboxID string, err error) {
	if c == "" {
		return time.Time{}, "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) <= 8 {
		return time.Time{}, "", validate.Errorf("cursor", "is not a cursor this API returned; pass next_cursor of the previous page as it is")
	}
	return time.UnixMicro(int64(binary.BigEndian.Uint64(b))).UTC(), string(b[8:]), nil
}
