// Package fsops does the filesystem.Filesystem operations of envd on
// absolute paths: stat, make a directory, move, list to a depth, remove.
//
// envd runs as root; callers run these operations for a user inside As, so
// the kernel checks that user's permissions and what they create belongs
// to the user.
package fsops

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// ErrInvalid marks a request that cannot apply to what is at the path (list
// a file, make a directory where a file is). Missing paths are
// os.ErrNotExist, existing ones os.ErrExist, refusals os.ErrPermission.
var ErrInvalid = errors.New("invalid filesystem request")

// Type is what kind of entry a path is. Symlinks are reported as such, not
// followed.
type Type int

// Entry types.
const (
	TypeOther Type = iota
	TypeFile
	TypeDir
	TypeSymlink
)

// Entry describes one filesystem entry.
type Entry struct {
	Name          string
	Path          string
	Type          Type
	Size          int64
	Mode          fs.FileMode // permission bits
	Permissions   string      // as ls shows them, "drwxr-xr-x"
	UID, GID      uint32
	Modified      time.Time
	SymlinkTarget string // set for symlinks
	// Metadata is the user metadata of a file or directory (see
	// MetadataPrefix), nil when it has none.
	Metadata map[string]string
}

// Stat describes path without following a final symlink.
func Stat(path string) (Entry, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return Entry{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return entry(path, fi), nil
}

func entry(path string, fi fs.FileInfo) Entry {
	e := Entry{
		Name:        fi.Name(),
		Path:        path,
		Size:        fi.Size(),
		Mode:        fi.Mode().Perm(),
		Permissions: fi.Mode().String(),
		Modified:    fi.ModTime(),
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Type = TypeSymlink
		if target, err := os.Readlink(path); err == nil {
			e.SymlinkTarget = target
		}
	case fi.IsDir():
		e.Type = TypeDir
		e.Metadata = readMetadata(path)
	case fi.Mode().IsRegular():
		e.Type = TypeFile
		e.Metadata = readMetadata(path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.UID, e.GID = st.Uid, st.Gid
	}
	return e
}

// MakeDir creates path and any missing parents. An existing directory is
// os.ErrExist; an existing file ErrInvalid.
func MakeDir(path string) (Entry, error) {
	if fi, err := os.Stat(path); err == nil {
		if fi.IsDir() {
			return Entry{}, fmt.Errorf("make directory %s: %w", path, os.ErrExist)
		}
		return Entry{}, fmt.Errorf("%w: make directory %s: a file is in the way", ErrInvalid, path)
	}
	if err := MkdirAll(path); err != nil {
		return Entry{}, err
	}
	return Stat(path)
}

// MkdirAll is os.MkdirAll with errors that name the path and ErrInvalid
// when a file is in the way.
func MkdirAll(path string) error {
	fi, err := os.Stat(path)
	if err == nil {
		if fi.IsDir() {
			return nil
		}
		return fmt.Errorf("%w: create directory %s: a file is in the way", ErrInvalid, path)
	}
	if parent := filepath.Dir(path); parent != path {
		if err := MkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil // created concurrently
		}
		return fmt.Errorf("create directory %s: %w", path, err)
	}
	return nil
}

// Move renames src to dst, creating dst's missing parents. It does not copy
// across filesystems.
func Move(src, dst string) (Entry, error) {
	if _, err := os.Lstat(src); err != nil {
		return Entry{}, fmt.Errorf("move %s: %w", src, err)
	}
	if err := MkdirAll(filepath.Dir(dst)); err != nil {
		return Entry{}, err
	}
	if err := os.Rename(src, dst); err != nil {
		if errors.Is(err, syscall.EXDEV) {
			return Entry{}, fmt.Errorf("%w: move %s to %s: they are on different filesystems", ErrInvalid, src, dst)
		}
		if errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.EINVAL) {
			return Entry{}, fmt.Errorf("%w: move %s to %s: %w", ErrInvalid, src, dst, err)
		}
		return Entry{}, fmt.Errorf("move %s to %s: %w", src, dst, err)
	}
	return Stat(dst)
}

// ListDir lists path's entries down to depth levels (1: only its children),
// sorted by path within each directory. Symlinks to directories are listed,
// not entered, so a loop cannot make the listing endless.
func ListDir(path string, depth int) ([]Entry, error) {
	if depth < 1 {
		depth = 1
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", path, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: list %s: not a directory", ErrInvalid, path)
	}
	var out []Entry
	if err := list(path, depth, &out); err != nil {
		return nil, err
	}
	return out, nil
}

func list(dir string, depth int, out *[]Entry) error {
	des, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	for _, de := range des {
		p := filepath.Join(dir, de.Name())
		fi, err := de.Info()
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // removed while listing
			}
			return fmt.Errorf("stat %s: %w", p, err)
		}
		e := entry(p, fi)
		*out = append(*out, e)
		if e.Type == TypeDir && depth > 1 {
			if err := list(p, depth-1, out); err != nil && !errors.Is(err, os.ErrPermission) {
				return err
			}
		}
	}
	return nil
}

// Remove deletes path, recursively for a directory. A missing path is
// os.ErrNotExist so the client learns it named the wrong thing.
func Remove(path string) error {
	if _, err := os.Lstat(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if filepath.Dir(path) == path {
		return fmt.Errorf("%w: refusing to remove the root directory", ErrInvalid)
	}
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}
