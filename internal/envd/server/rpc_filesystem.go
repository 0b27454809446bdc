package server

import (
	"context"
	"errors"
	"fmt"
	"os"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wrenn/wrenn/internal/envd/account"
	"github.com/wrenn/wrenn/internal/envd/fsops"
	fspb "github.com/wrenn/wrenn/proto/envd/filesystem"
	"github.com/wrenn/wrenn/proto/envd/filesystem/filesystemconnect"
)

// filesystemService implements filesystem.Filesystem for the requesting
// user: paths are relative to their home, "~" expanded.
type filesystemService struct {
	s *Server
}

var _ filesystemconnect.FilesystemHandler = (*filesystemService)(nil)

// fsError maps filesystem failures to Connect codes.
func fsError(err error) error {
	code := connect.CodeInternal
	switch {
	case errors.Is(err, errInvalid), errors.Is(err, fsops.ErrInvalid):
		code = connect.CodeInvalidArgument
	case errors.Is(err, os.ErrNotExist):
		code = connect.CodeNotFound
	case errors.Is(err, os.ErrExist):
		code = connect.CodeAlreadyExists
	case errors.Is(err, os.ErrPermission):
		code = connect.CodePermissionDenied
	}
	return connect.NewError(code, err)
}

func (f *filesystemService) path(c caller, field, p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("%w: %s is empty", errInvalid, field)
	}
	return c.resolvePath(p), nil
}

func toEntry(e fsops.Entry, names account.Names) *fspb.EntryInfo {
	out := &fspb.EntryInfo{
		Name:         e.Name,
		Path:         e.Path,
		Size:         e.Size,
		Mode:         uint32(e.Mode),
		Permissions:  e.Permissions,
		Owner:        names.User(e.UID),
		Group:        names.Group(e.GID),
		ModifiedTime: timestamppb.New(e.Modified),
		Metadata:     e.Metadata,
	}
	switch e.Type {
	case fsops.TypeFile:
		out.Type = fspb.FileType_FILE_TYPE_FILE
	case fsops.TypeDir:
		out.Type = fspb.FileType_FILE_TYPE_DIRECTORY
	case fsops.TypeSymlink:
		out.Type = fspb.FileType_FILE_TYPE_SYMLINK
		t := e.SymlinkTarget
		out.SymlinkTarget = &t
	}
	return out
}

func (f *filesystemService) names() account.Names {
	n, err := f.s.opts.Users.Names()
	if err != nil {
		f.s.log.Warn("read user and group names", "error", err)
	}
	return n
}

func (f *filesystemService) Stat(_ context.Context, req *connect.Request[fspb.StatRequest]) (*connect.Response[fspb.StatResponse], error) {
	c, err := f.s.callerOf(req.Header())
	if err != nil {
		return nil, fsError(err)
	}
	p, err := f.path(c, "path", req.Msg.GetPath())
	if err != nil {
		return nil, fsError(err)
	}
	e, err := fsops.As(c.fs, func() (fsops.Entry, error) { return fsops.Stat(p) })
	if err != nil {
		return nil, fsError(err)
	}
	return connect.NewResponse(&fspb.StatResponse{Entry: toEntry(e, f.names())}), nil
}

func (f *filesystemService) MakeDir(_ context.Context, req *connect.Request[fspb.MakeDirRequest]) (*connect.Response[fspb.MakeDirResponse], error) {
	c, err := f.s.callerOf(req.Header())
	if err != nil {
		return nil, fsError(err)
	}
	p, err := f.path(c, "path", req.Msg.GetPath())
	if err != nil {
		return nil, fsError(err)
	}
	e, err := fsops.As(c.fs, func() (fsops.Entry, error) { return fsops.MakeDir(p) })
	if err != nil {
		return nil, fsError(err)
	}
	return connect.NewResponse(&fspb.MakeDirResponse{Entry: toEntry(e, f.names())}), nil
}

func (f *filesystemService) Move(_ context.Context, req *connect.Request[fspb.MoveRequest]) (*connect.Response[fspb.MoveResponse], error) {
	c, err := f.s.callerOf(req.Header())
	if err != nil {
		return nil, fsError(err)
	}
	src, err := f.path(c, "source", req.Msg.GetSource())
	if err != nil {
		return nil, fsError(err)
	}
	dst, err := f.path(c, "destination", req.Msg.GetDestination())
	if err != nil {
		return nil, fsError(err)
	}
	e, err := fsops.As(c.fs, func() (fsops.Entry, error) { return fsops.Move(src, dst) })
	if err != nil {
		return nil, fsError(err)
	}
	return connect.NewResponse(&fspb.MoveResponse{Entry: toEntry(e, f.names())}), nil
}

// maxListDepth bounds ListDir so one call cannot walk a whole disk by
// accident; the SDK default is 1.
const maxListDepth = 64

func (f *filesystemService) ListDir(_ context.Context, req *connect.Request[fspb.ListDirRequest]) (*connect.Response[fspb.ListDirResponse], error) {
	c, err := f.s.callerOf(req.Header())
	if err != nil {
		return nil, fsError(err)
	}
	p, err := f.path(c, "path", req.Msg.GetPath())
	if err != nil {
		return nil, fsError(err)
	}
	depth := int(min(req.Msg.GetDepth(), maxListDepth))
	entries, err := fsops.As(c.fs, func() ([]fsops.Entry, error) { return fsops.ListDir(p, depth) })
	if err != nil {
		return nil, fsError(err)
	}
	names := f.names()
	out := &fspb.ListDirResponse{Entries: make([]*fspb.EntryInfo, 0, len(entries))}
	for _, e := range entries {
		out.Entries = append(out.Entries, toEntry(e, names))
	}
	return connect.NewResponse(out), nil
}

func (f *filesystemService) Remove(_ context.Context, req *connect.Request[fspb.RemoveRequest]) (*connect.Response[fspb.RemoveResponse], error) {
	c, err := f.s.callerOf(req.Header())
	if err != nil {
		return nil, fsError(err)
	}
	p, err := f.path(c, "path", req.Msg.GetPath())
	if err != nil {
		return nil, fsError(err)
	}
	if err := fsops.Run(c.fs, func() error { return fsops.Remove(p) }); err != nil {
		return nil, fsError(err)
	}
	return connect.NewResponse(&fspb.RemoveResponse{}), nil
}
