package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/envdclient"
	"github.com/wrenn/wrenn/proto/envd/filesystem"
	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
)

func checkPath(p string) error {
	if p == "" {
		return fmt.Errorf("%w: path is empty", ErrInvalid)
	}
	for i := 0; i < len(p); i++ {
		if p[i] == 0 {
			return fmt.Errorf("%w: path contains a NUL byte", ErrInvalid)
		}
	}
	return nil
}

func toEntryInfo(e *filesystem.EntryInfo) *hostagentv1.EntryInfo {
	if e == nil {
		return nil
	}
	out := &hostagentv1.EntryInfo{
		Name: e.GetName(), Path: e.GetPath(), Size: e.GetSize(), Mode: e.GetMode(),
		Owner: e.GetOwner(), Group: e.GetGroup(), ModifiedTime: e.GetModifiedTime(),
		SymlinkTarget: e.GetSymlinkTarget(),
	}
	switch e.GetType() {
	case filesystem.FileType_FILE_TYPE_FILE:
		out.Type = hostagentv1.FileType_FILE_TYPE_FILE
	case filesystem.FileType_FILE_TYPE_DIRECTORY:
		out.Type = hostagentv1.FileType_FILE_TYPE_DIRECTORY
	case filesystem.FileType_FILE_TYPE_SYMLINK:
		out.Type = hostagentv1.FileType_FILE_TYPE_SYMLINK
	}
	return out
}

// withFS runs fn on a running sandbox's envd after checking path.
func (s *Service) withFS(sandboxID, path string, fn func(*envdclient.Client) error) error {
	if err := checkPath(path); err != nil {
		return connectError(err)
	}
	envd, done, err := s.envdFor(sandboxID)
	if err != nil {
		return connectError(err)
	}
	defer done()
	return connectError(fn(envd))
}

// maxListDepth bounds ListDir's recursion: a deep listing of / would walk
// the whole disk into one message.
const maxListDepth = 16

// ListDir implements the RPC.
func (s *Service) ListDir(ctx context.Context, req *connect.Request[hostagentv1.ListDirRequest]) (*connect.Response[hostagentv1.ListDirResponse], error) {
	r := req.Msg
	depth := max(r.GetDepth(), 1)
	if depth > maxListDepth {
		return nil, connectError(fmt.Errorf("%w: depth %d is above the maximum %d", ErrInvalid, depth, maxListDepth))
	}
	var entries []*filesystem.EntryInfo
	err := s.withFS(r.GetSandboxId(), r.GetPath(), func(c *envdclient.Client) error {
		var err error
		entries, err = c.ListDir(ctx, r.GetUser(), r.GetPath(), depth)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]*hostagentv1.EntryInfo, 0, len(entries))
	for _, e := range entries {
		out = append(out, toEntryInfo(e))
	}
	return connect.NewResponse(&hostagentv1.ListDirResponse{Entries: out}), nil
}

// MakeDir implements the RPC.
func (s *Service) MakeDir(ctx context.Context, req *connect.Request[hostagentv1.MakeDirRequest]) (*connect.Response[hostagentv1.MakeDirResponse], error) {
	r := req.Msg
	var entry *filesystem.EntryInfo
	err := s.withFS(r.GetSandboxId(), r.GetPath(), func(c *envdclient.Client) error {
		var err error
		entry, err = c.MakeDir(ctx, r.GetUser(), r.GetPath())
		return err
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&hostagentv1.MakeDirResponse{Entry: toEntryInfo(entry)}), nil
}

// RemovePath implements the RPC.
func (s *Service) RemovePath(ctx context.Context, req *connect.Request[hostagentv1.RemovePathRequest]) (*connect.Response[hostagentv1.RemovePathResponse], error) {
	r := req.Msg
	err := s.withFS(r.GetSandboxId(), r.GetPath(), func(c *envdclient.Client) error {
		return c.Remove(ctx, r.GetUser(), r.GetPath())
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&hostagentv1.RemovePathResponse{}), nil
}

// StatPath implements the RPC.
func (s *Service) StatPath(ctx context.Context, req *connect.Request[hostagentv1.StatPathRequest]) (*connect.Response[hostagentv1.StatPathResponse], error) {
	r := req.Msg
	var entry *filesystem.EntryInfo
	err := s.withFS(r.GetSandboxId(), r.GetPath(), func(c *envdclient.Client) error {
		var err error
		entry, err = c.Stat(ctx, r.GetUser(), r.GetPath())
		return err
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&hostagentv1.StatPathResponse{Entry: toEntryInfo(entry)}), nil
}

// FilesRoutePattern is the agent's HTTP route for file contents. The
// control plane streams downloads (GET) and uploads (PUT, raw body) through
// it; Connect client streaming would need HTTP/2, which agent links do not
// speak.
const FilesRoutePattern = "/sandboxes/{id}/files"

// FilesHandler serves GET and PUT FilesRoutePattern?path=&user=: the bytes
// stream between the caller and envd's /files through the sandbox's envd
// client, never held whole in memory. Errors are {"code","message"} with a
// Connect code name, which the control plane's client maps like RPC errors.
func (s *Service) FilesHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+FilesRoutePattern, s.getFile)
	mux.HandleFunc("PUT "+FilesRoutePattern, s.putFile)
	return mux
}

func (s *Service) getFile(w http.ResponseWriter, r *http.Request) {
	path, user := r.URL.Query().Get("path"), r.URL.Query().Get("user")
	if err := checkPath(path); err != nil {
		writeHTTPError(w, err)
		return
	}
	envd, done, err := s.envdFor(r.PathValue("id"))
	if err != nil {
		writeHTTPError(w, err)
		return
	}
	defer done()
	body, size, err := envd.ReadFile(r.Context(), user, path)
	if err != nil {
		writeHTTPError(w, err)
		return
	}
	defer body.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	if size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	// A failure mid-copy can only cut the response short; the length
	// header lets the far end notice.
	_, _ = io.Copy(w, body)
}

func (s *Service) putFile(w http.ResponseWriter, r *http.Request) {
	path, user := r.URL.Query().Get("path"), r.URL.Query().Get("user")
	if err := checkPath(path); err != nil {
		writeHTTPError(w, err)
		return
	}
	envd, done, err := s.envdFor(r.PathValue("id"))
	if err != nil {
		writeHTTPError(w, err)
		return
	}
	defer done()
	if err := envd.WriteFile(r.Context(), user, path, r.Body, r.ContentLength); err != nil {
		writeHTTPError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// HTTPError is the body of a failed agent HTTP route.
type HTTPError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeHTTPError answers with the Connect code an RPC would have used, so
// one mapping serves both kinds of agent call.
func writeHTTPError(w http.ResponseWriter, err error) {
	code := connect.CodeOf(connectError(err))
	var fe *envdclient.FileError
	if errors.As(err, &fe) {
		switch {
		case fe.Status == http.StatusBadRequest:
			code = connect.CodeInvalidArgument
		case fe.Status == http.StatusNotFound:
			code = connect.CodeNotFound
		case fe.Status == http.StatusForbidden:
			code = connect.CodePermissionDenied
		case fe.Status == http.StatusInsufficientStorage:
			code = connect.CodeResourceExhausted
		default:
			code = connect.CodeInternal
		}
	}
	status := http.StatusInternalServerError
	switch code {
	case connect.CodeInvalidArgument:
		status = http.StatusBadRequest
	case connect.CodeNotFound:
		status = http.StatusNotFound
	case connect.CodeFailedPrecondition:
		status = http.StatusConflict
	case connect.CodePermissionDenied:
		status = http.StatusForbidden
	case connect.CodeResourceExhausted:
		status = http.StatusInsufficientStorage
	case connect.CodeUnavailable:
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(HTTPError{Code: code.String(), Message: err.Error()})
}
