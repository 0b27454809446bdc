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
	"sync"
	"time"

	"github.com/wrenn/wrenn/internal/pki"
	"golang.org/x/sys/unix"
)

// Credentials are what the control plane gave this host at registration
// or at the last refresh. They are kept under WRENN_DIR (0600, replaced
// atomically) so the one-time registration token is needed only once.
type Credentials struct {
	HostID       string `json:"host_id"`
	HostToken    string `json:"host_token"`
	RefreshToken string `json:"refresh_token,omitempty"`
	// Certificate and CACertificate (PEM) are set when the agent serves
	// mutual TLS: its server certificate, for the key in Registrar.KeyPath,
	// and the CA that signs both it and the control plane's client
	// certificates.
	Certificate   string `json:"certificate,omitempty"`
	CACertificate string `json:"ca_certificate,omitempty"`
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
	CSR               string `json:"csr,omitempty"`
	Address           string `json:"address"`
	Runtime           string `json:"runtime"`
	Capacity
}

// Registrar registers this agent with the control plane, keeps its
// heartbeat going and refreshes its credentials before its certificate
// runs out. It is safe for concurrent use once registered.
type Registrar struct {
	CPURL     string
	Address   string
	Runtime   string
	CredsPath string
	DataDir   string
	Client    *http.Client
	Logger    *slog.Logger
	// TLS makes the agent ask for a server certificate (with a CSR for the
	// key at KeyPath, generated on first use) and keep it renewed.
	TLS     bool
	KeyPath string
	// Now is the clock for renewal decisions; nil means time.Now.
	Now func() time.Time
	// OnCredentials is called with every new set of credentials (after
	// registration, loading and each refresh), before they are used.
	OnCredentials func(Credentials) error

	mu  sync.Mutex
	cur Credentials
}

// Register returns stored credentials, or registers with token and stores
// the result. With TLS, stored credentials without a certificate or with
// one that is due for renewal are refreshed first.
func (r *Registrar) Register(ctx context.Context, token string) (Credentials, error) {
	var c Credentials
	b, err := os.ReadFile(r.CredsPath)
	if err == nil {
		if err := json.Unmarshal(b, &c); err != nil || c.HostID == "" || c.HostToken == "" {
			return c, fmt.Errorf("credentials file %s is damaged: remove it and register again with WRENN_REGISTRATION_TOKEN", r.CredsPath)
		}
		r.setCurrent(c)
		if r.TLS && r.needsCert(c) {
			if c.RefreshToken == "" {
				return c, fmt.Errorf("this agent registered without TLS and has no refresh token to get a certificate with: remove %s and register again with a new WRENN_REGISTRATION_TOKEN", r.CredsPath)
			}
			return r.Refresh(ctx)
		}
		return c, r.notify(c)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return c, fmt.Errorf("read credentials: %w", err)
	}
	if token == "" {
		return c, errors.New("this agent is not registered yet: set WRENN_REGISTRATION_TOKEN to a token from POST /v1/admin/hosts")
	}
	info := r.info()
	info.RegistrationToken = token
	if r.TLS {
		if info.CSR, err = r.csr(); err != nil {
			return c, err
		}
	}
	if err := r.post(ctx, "/v1/hosts/register", "", info, &c); err != nil {
		return c, fmt.Errorf("register with control plane: %w", err)
	}
	if c.HostID == "" || c.HostToken == "" {
		return c, errors.New("register with control plane: answer lacks host_id or host_token")
	}
	if r.TLS && (c.Certificate == "" || c.CACertificate == "") {
		return c, errors.New("register with control plane: answer lacks the certificate this agent asked for")
	}
	return c, r.adopt(c)
}

// Refresh trades the refresh token for new tokens and, with TLS, a new
// certificate, and stores them. The old tokens stop working as soon as the
// control plane answers.
func (r *Registrar) Refresh(ctx context.Context) (Credentials, error) {
	old := r.Current()
	if old.RefreshToken == "" {
		return old, errors.New("refresh credentials: no refresh token stored")
	}
	body := struct {
		RefreshToken string `json:"refresh_token"`
		CSR          string `json:"csr,omitempty"`
	}{RefreshToken: old.RefreshToken}
	if r.TLS {
		csr, err := r.csr()
		if err != nil {
			return old, err
		}
		body.CSR = csr
	}
	var c Credentials
	if err := r.post(ctx, "/v1/hosts/refresh", "", body, &c); err != nil {
		return old, fmt.Errorf("refresh credentials: %w", err)
	}
	if c.HostID != old.HostID || c.HostToken == "" || c.RefreshToken == "" || (r.TLS && c.Certificate == "") {
		return old, errors.New("refresh credentials: incomplete answer")
	}
	if err := r.adopt(c); err != nil {
		return old, err
	}
	r.Logger.Info("credentials refreshed", "host_id", c.HostID, "certificate", c.Certificate != "")
	return c, nil
}

// Current returns the credentials in use.
func (r *Registrar) Current() Credentials {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

func (r *Registrar) setCurrent(c Credentials) {
	r.mu.Lock()
	r.cur = c
	r.mu.Unlock()
}

// adopt stores c atomically and makes it current.
func (r *Registrar) adopt(c Credentials) error {
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("store credentials: %w", err)
	}
	if err := writeFileAtomic(r.CredsPath, b); err != nil {
		return fmt.Errorf("store credentials: %w", err)
	}
	r.setCurrent(c)
	return r.notify(c)
}

func (r *Registrar) notify(c Credentials) error {
	if r.OnCredentials == nil {
		return nil
	}
	return r.OnCredentials(c)
}

func (r *Registrar) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// needsCert reports whether c lacks a usable certificate or it has less
// than a third of its lifetime left.
func (r *Registrar) needsCert(c Credentials) bool {
	if c.Certificate == "" || c.CACertificate == "" {
		return true
	}
	if _, err := os.Stat(r.KeyPath); err != nil {
		return true
	}
	return pki.NeedsRenewal([]byte(c.Certificate), r.now())
}

// csr returns a certificate request for the agent's key, generating and
// storing the key (0600) on first use.
func (r *Registrar) csr() (string, error) {
	key, err := os.ReadFile(r.KeyPath)
	if errors.Is(err, os.ErrNotExist) {
		if key, err = pki.NewKey(); err != nil {
			return "", err
		}
		if err := writeFileAtomic(r.KeyPath, key); err != nil {
			return "", fmt.Errorf("store TLS key: %w", err)
		}
	} else if err != nil {
		return "", fmt.Errorf("read TLS key: %w", err)
	}
	csr, err := pki.NewCSR(key)
	if err != nil {
		return "", fmt.Errorf("TLS key %s: %w", r.KeyPath, err)
	}
	return string(csr), nil
}

// writeFileAtomic replaces path with b (0600): a crash leaves the old file
// or the new one, never a torn one.
func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Heartbeat sends one heartbeat with the current host token. A host token
// the control plane refuses while a refresh token is held means a refresh
// rotated it but its answer never arrived (or was never stored): the
// control plane still takes the refresh token this agent has until a
// heartbeat confirms newer ones, so refresh and try once more.
func (r *Registrar) Heartbeat(ctx context.Context) error {
	err := r.post(ctx, "/v1/hosts/heartbeat", r.Current().HostToken, r.info(), nil)
	var se *statusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized || r.Current().RefreshToken == "" {
		return err
	}
	r.Logger.Warn("host token refused; refreshing credentials", "host_id", r.Current().HostID, "err", err)
	if _, rerr := r.Refresh(ctx); rerr != nil {
		return fmt.Errorf("%w (and %v)", err, rerr)
	}
	return r.post(ctx, "/v1/hosts/heartbeat", r.Current().HostToken, r.info(), nil)
}

// statusError is a control-plane answer other than 2xx.
type statusError struct {
	Code int
	Msg  string
}

func (e *statusError) Error() string { return e.Msg }

// HeartbeatLoop sends a heartbeat every interval until ctx ends, and with
// TLS refreshes the credentials when the certificate has less than a third
// of its lifetime left. Failures are logged and retried at the next tick;
// the control plane marks the host unreachable if they persist.
func (r *Registrar) HeartbeatLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if r.TLS && r.needsCert(r.Current()) {
				if _, err := r.Refresh(hctx); err != nil && ctx.Err() == nil {
					r.Logger.Warn("certificate renewal failed", "host_id", r.Current().HostID, "err", err)
				}
			}
			if err := r.Heartbeat(hctx); err != nil && ctx.Err() == nil {
				r.Logger.Warn("heartbeat failed", "host_id", r.Current().HostID, "err", err)
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
			return &statusError{Code: resp.StatusCode, Msg: resp.Status + ": " + e.Error.Message}
		}
		return &statusError{Code: resp.StatusCode, Msg: resp.Status}
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
