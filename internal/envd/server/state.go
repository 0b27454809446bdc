package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wrenn/wrenn/internal/envd/account"
	"github.com/wrenn/wrenn/internal/envd/fsops"
)

// state is what /init sets. The token is kept as its SHA-256 too, so
// comparing a presented one takes the same time whatever its length; the
// token itself is needed to check signed /files URLs.
type state struct {
	mu             sync.RWMutex
	token          []byte
	tokenSum       *[sha256.Size]byte
	envs           map[string]string
	defaultUser    string
	defaultWorkdir string
}

func (st *state) snapshot() (envs map[string]string, user, workdir string) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return maps.Clone(st.envs), st.defaultUser, st.defaultWorkdir
}

// AccessTokenHeader carries the sandbox's access token on every request.
const AccessTokenHeader = "X-Access-Token"

// authenticate refuses every request but GET /health and CORS preflights
// unless it carries the current token, once one is set. A /files request
// without the token header may instead present a signed URL (signature.go);
// the user it acts as is then the one the signature names, never one from
// an Authorization header.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" || (r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "") {
			next.ServeHTTP(w, r)
			return
		}
		s.state.mu.RLock()
		want, token := s.state.tokenSum, s.state.token
		s.state.mu.RUnlock()
		if want != nil {
			got, ok := r.Header[http.CanonicalHeaderKey(AccessTokenHeader)]
			if op := signedOp(r); !ok && op != "" && r.URL.Query().Has(signatureParam) {
				if err := checkSignature(r, op, token, s.opts.Now()); err != nil {
					status := http.StatusUnauthorized
					if errors.Is(err, errInvalid) {
						status = http.StatusBadRequest
					}
					writeError(w, status, err.Error())
					return
				}
				r.Header.Del("Authorization")
				next.ServeHTTP(w, r)
				return
			}
			if !ok || len(got) != 1 {
				writeError(w, http.StatusUnauthorized, "missing access token: send the sandbox's token in the X-Access-Token header (or, for /files, use a signed URL)")
				return
			}
			sum := sha256.Sum256([]byte(got[0]))
			if subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
				writeError(w, http.StatusUnauthorized, "wrong access token")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// httpError is the JSON body of every non-RPC error, as E2B's envd sends it.
type httpError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(httpError{Code: status, Message: msg})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

// InitRequest is the body of POST /init, sent by the agent after boot and
// after every resume. Absent fields leave the current value alone.
type InitRequest struct {
	AccessToken    *string           `json:"accessToken,omitempty"`
	EnvVars        map[string]string `json:"envVars,omitempty"`
	DefaultUser    *string           `json:"defaultUser,omitempty"`
	DefaultWorkdir *string           `json:"defaultWorkdir,omitempty"`
	Timestamp      *time.Time        `json:"timestamp,omitempty"`
}

// maxInitBody bounds the /init body; env vars are the only large part.
const maxInitBody = 1 << 20

// DecodeInit parses and validates an /init body. An empty body is a valid
// request that changes nothing.
func DecodeInit(r io.Reader) (InitRequest, error) {
	var req InitRequest
	dec := json.NewDecoder(io.LimitReader(r, maxInitBody+1))
	if err := dec.Decode(&req); err != nil {
		if errors.Is(err, io.EOF) {
			return InitRequest{}, nil
		}
		return InitRequest{}, fmt.Errorf("decode /init body: %w", err)
	}
	if dec.More() {
		return InitRequest{}, errors.New("decode /init body: trailing data after the JSON object")
	}
	if req.AccessToken != nil && *req.AccessToken == "" {
		return InitRequest{}, errors.New("accessToken must not be empty")
	}
	for k := range req.EnvVars {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return InitRequest{}, fmt.Errorf("envVars: invalid variable name %q", k)
		}
		if strings.ContainsRune(req.EnvVars[k], 0) {
			return InitRequest{}, fmt.Errorf("envVars: value of %q contains a NUL byte", k)
		}
	}
	if req.DefaultWorkdir != nil && *req.DefaultWorkdir != "" && !filepath.IsAbs(*req.DefaultWorkdir) {
		return InitRequest{}, fmt.Errorf("defaultWorkdir %q must be an absolute path", *req.DefaultWorkdir)
	}
	return req, nil
}

func (s *Server) handleInit(w http.ResponseWriter, r *http.Request) {
	req, err := DecodeInit(r.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.DefaultUser != nil && *req.DefaultUser != "" {
		if _, err := s.opts.Users.Lookup(*req.DefaultUser); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("defaultUser %q does not exist in the sandbox", *req.DefaultUser))
			return
		}
	}
	st := &s.state
	st.mu.Lock()
	if req.AccessToken != nil {
		sum := sha256.Sum256([]byte(*req.AccessToken))
		st.token, st.tokenSum = []byte(*req.AccessToken), &sum
	}
	maps.Copy(st.envs, req.EnvVars)
	if req.DefaultUser != nil {
		st.defaultUser = *req.DefaultUser
	}
	if req.DefaultWorkdir != nil {
		st.defaultWorkdir = *req.DefaultWorkdir
	}
	st.mu.Unlock()

	if req.Timestamp != nil {
		// Only ever move the clock forward: after a resume the guest is
		// behind by the pause; a slightly slow host must not rewind it.
		if now := s.opts.Now(); req.Timestamp.Sub(now) > time.Second {
			if err := s.opts.SetClock(*req.Timestamp); err != nil {
				s.log.Warn("set clock from /init", "error", err, "behind", req.Timestamp.Sub(now).String())
			} else {
				s.log.Info("clock set from /init", "behind", req.Timestamp.Sub(now).String())
			}
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleEnvs(w http.ResponseWriter, _ *http.Request) {
	envs, _, _ := s.state.snapshot()
	writeJSON(w, envs)
}

// ParseBasicUser returns the user named by an `Authorization: Basic
// base64("<user>:")` header value, as E2B's SDKs send it to choose who runs a
// call. An empty header or an empty name selects nobody (""). The password
// part is ignored: the access token, not this header, authenticates.
func ParseBasicUser(header string) (string, error) {
	if header == "" {
		return "", nil
	}
	scheme, payload, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", errors.New("authorization header: want the Basic scheme with base64(\"<user>:\")")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(payload))
	if err != nil {
		return "", fmt.Errorf("authorization header: invalid base64: %w", err)
	}
	name, _, _ := strings.Cut(string(raw), ":")
	if strings.ContainsAny(name, "/\x00\n") {
		return "", fmt.Errorf("authorization header: invalid user name %q", name)
	}
	return name, nil
}

// caller is who a request acts as and where it starts.
type caller struct {
	user    account.User
	workdir string // "" means the user's home
	envs    map[string]string
	// fs is who the caller's file operations run as (see fsops.As): the
	// user, unless the user is root or envd cannot switch users because
	// it is not root itself (standalone on a developer's machine).
	fs *fsops.Identity
}

// callerOf resolves the user of a request: the Basic header's, else /init's
// default, else Options.DefaultUser.
func (s *Server) callerOf(h http.Header) (caller, error) {
	name, err := ParseBasicUser(h.Get("Authorization"))
	if err != nil {
		return caller{}, fmt.Errorf("%w: %w", errInvalid, err)
	}
	envs, defUser, workdir := s.state.snapshot()
	source := "the Authorization header"
	if name == "" {
		name, source = defUser, "the default user set by /init"
	}
	if name == "" {
		name, source = s.opts.DefaultUser, "envd's default user"
	}
	u, err := s.opts.Users.Lookup(name)
	if err != nil {
		if errors.Is(err, account.ErrUnknownUser) {
			return caller{}, fmt.Errorf("%w: user %q (from %s) does not exist in the sandbox", errInvalid, name, source)
		}
		return caller{}, fmt.Errorf("resolve user %q: %w", name, err)
	}
	c := caller{user: u, workdir: workdir, envs: envs}
	if u.UID != 0 && s.root {
		c.fs = &fsops.Identity{UID: u.UID, GID: u.GID, Groups: u.Groups}
	}
	return c, nil
}

// resolvePath makes p absolute for the caller: "~" and "~/x" are in the
// user's home, other relative paths are relative to it too.
func (c caller) resolvePath(p string) string {
	switch {
	case p == "~":
		return c.user.Home
	case strings.HasPrefix(p, "~/"):
		return filepath.Join(c.user.Home, p[2:])
	case filepath.IsAbs(p):
		return filepath.Clean(p)
	default:
		return filepath.Join(c.user.Home, p)
	}
}

// mergeEnv returns layers applied in order, later values winning, each
// variable once, in first-seen order.
func mergeEnv(base []string, layers ...map[string]string) []string {
	idx := map[string]int{}
	var out []string
	set := func(k, v string) {
		if i, ok := idx[k]; ok {
			out[i] = k + "=" + v
			return
		}
		idx[k] = len(out)
		out = append(out, k+"="+v)
	}
	for _, kv := range base {
		k, v, ok := strings.Cut(kv, "=")
		if ok && k != "" {
			set(k, v)
		}
	}
	for _, layer := range layers {
		keys := make([]string, 0, len(layer))
		for k := range layer {
			keys = append(keys, k)
		}
		// Deterministic order for new keys.
		slices.Sort(keys)
		for _, k := range keys {
			set(k, layer[k])
		}
	}
	return out
}
