package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Credentials are what the control plane gave this host at registration.
// They are kept under WRENN_DIR so the one-time registration token is needed
// only once.
type Credentials struct {
	HostID    string `json:"host_id"`
	HostToken string `json:"host_token"`
}

// Capacity is what this host offers to the scheduler.
type Capacity struct {
	VCPUs    int    `json:"vcpus"`
	MemoryMB uint64 `json:"memory_mb"`
	DiskMB   uint64 `json:"disk_mb"`
}

// hostInfo is the body of register and heartbeat calls.
type hostInfo struct {
	RegistrationToken string `json:"registration_token,omitempty"`
	Address           string `json:"address"`
	Runtime           string `json:"runtime"`
	Capacity
}

// Registrar registers this agent with the control plane and keeps its
// heartbeat going.
type Registrar struct {
	CPURL     string
	Address   string
	Runtime   string
	CredsPath string
	DataDir   string
	Client    *http.Client
	Logger    *slog.Logger
}

// Register returns stored credentials, or registers with token and stores
// the result.
func (r *Registrar) Register(ctx context.Context, token string) (Credentials, error) {
	var c Credentials
	b, err := os.ReadFile(r.CredsPath)
	if err == nil {
		if err := json.Unmarshal(b, &c); err != nil || c.HostID == "" || c.HostToken == "" {
			return c, fmt.Errorf("credentials file %s is damaged: remove it and register again with WRENN_REGISTRATION_TOKEN", r.CredsPath)
		}
		return c, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return c, fmt.Errorf("read credentials: %w", err)
	}
	if token == "" {
		return c, errors.New("this agent is not registered yet: set WRENN_REGISTRATION_TOKEN to a token from POST /v1/admin/hosts")
	}
	info := r.info()
	info.RegistrationToken = token
	if err := r.post(ctx, "/v1/hosts/register", "", info, &c); err != nil {
		return c, fmt.Errorf("register with control plane: %w", err)
	}
	if c.HostID == "" || c.HostToken == "" {
		return c, errors.New("register with control plane: answer lacks host_id or host_token")
	}
	b, _ = json.Marshal(c)
	if err := os.MkdirAll(filepath.Dir(r.CredsPath), 0o700); err != nil {
		return c, fmt.Errorf("store credentials: %w", err)
	}
	tmp := r.CredsPath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return c, fmt.Errorf("store credentials: %w", err)
	}
	if err := os.Rename(tmp, r.CredsPath); err != nil {
		return c, fmt.Errorf("store credentials: %w", err)
	}
	return c, nil
}

// Heartbeat sends one heartbeat.
func (r *Registrar) Heartbeat(ctx context.Context, c Credentials) error {
	return r.post(ctx, "/v1/hosts/heartbeat", c.HostToken, r.info(), nil)
}

// HeartbeatLoop sends a heartbeat every interval until ctx ends. Failures
// are logged; the control plane marks the host unreachable if they persist.
func (r *Registrar) HeartbeatLoop(ctx context.Context, c Credentials, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := r.Heartbeat(hctx, c); err != nil && ctx.Err() == nil {
				r.Logger.Warn("heartbeat failed", "host_id", c.HostID, "err", err)
			}
			cancel()
		}
	}
}

func (r *Registrar) info() hostInfo {
	return hostInfo{Address: r.Address, Runtime: r.Runtime, Capacity: capacity(r.DataDir)}
}

func (r *Registrar) post(ctx context.Context, path, token string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(r.CPURL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := r.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error struct{ Message string } `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("%s: %s", resp.Status, e.Error.Message)
		}
		return fmt.Errorf("%s", resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
	}
	return nil
}

// capacity reads what this host has: CPUs, memory and the disk under dir.
func capacity(dir string) Capacity {
	c := Capacity{VCPUs: goruntime.NumCPU()}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		c.MemoryMB = uint64(si.Totalram) * uint64(si.Unit) >> 20
	}
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil {
		c.DiskMB = st.Blocks * uint64(st.Bsize) >> 20
	}
	return c
}
