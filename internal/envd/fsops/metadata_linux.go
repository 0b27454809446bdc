package fsops

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// MetadataPrefix is the extended-attribute namespace of user metadata on
// files (the SDKs' files.write metadata option): key k is stored as the
// attribute "user.e2b.k", so tools in the sandbox (getfattr, setfattr) see
// and change the same metadata.
const MetadataPrefix = "user.e2b."

// MaxMetadataKey is the longest metadata key: the kernel caps attribute
// names at 255 bytes (XATTR_NAME_MAX), the prefix included.
const MaxMetadataKey = 255 - len(MetadataPrefix)

// ErrMetadata marks metadata the filesystem refused to store: it has no
// user extended attributes, or the values do not fit.
var ErrMetadata = errors.New("metadata not stored")

// readMetadata returns the metadata of path without following a final
// symlink, or nil when it has none. It is best effort: a filesystem without
// extended attributes, or one the caller may not read, has no metadata.
func readMetadata(path string) map[string]string {
	md, _ := collectMetadata(
		func(buf []byte) (int, error) { return unix.Llistxattr(path, buf) },
		func(name string, buf []byte) (int, error) { return unix.Lgetxattr(path, name, buf) })
	return md
}

// collectMetadata gathers the MetadataPrefix attributes that list names
// and get reads; nil when there are none.
func collectMetadata(list func([]byte) (int, error), get func(string, []byte) (int, error)) (map[string]string, error) {
	names, err := xattrNames(list)
	if err != nil {
		return nil, err
	}
	var md map[string]string
	for _, name := range names {
		key, ok := strings.CutPrefix(name, MetadataPrefix)
		if !ok || key == "" {
			continue
		}
		value, err := xattrValue(func(buf []byte) (int, error) { return get(name, buf) })
		if err != nil {
			continue // removed meanwhile, or not readable
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = value
	}
	return md, nil
}

// ReplaceMetadata makes md the whole metadata of the open file f: it sets
// every key of md and removes the keys f had that md does not. When the
// filesystem refuses a key (errors wrapping ErrMetadata), the keys already
// set are put back as they were.
func ReplaceMetadata(f *os.File, md map[string]string) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("set the metadata of %s: %w", f.Name(), err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = replaceMetadata(int(fd), f.Name(), md) }); err != nil {
		return fmt.Errorf("set the metadata of %s: %w", f.Name(), err)
	}
	return ferr
}

func replaceMetadata(fd int, name string, md map[string]string) error {
	for key := range md {
		if key == "" || len(key) > MaxMetadataKey {
			return fmt.Errorf("%w: key %q must be 1 to %d bytes long", ErrMetadata, key, MaxMetadataKey)
		}
	}
	old, err := collectMetadata(
		func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) },
		func(attr string, buf []byte) (int, error) { return unix.Fgetxattr(fd, attr, buf) })
	if err != nil {
		return fmt.Errorf("read the metadata of %s: %w", name, err)
	}
	var set []string
	for key, value := range md {
		if err := unix.Fsetxattr(fd, MetadataPrefix+key, []byte(value), 0); err != nil {
			// Put back what this call changed, so a refusal changes nothing.
			for _, k := range set {
				if v, had := old[k]; had {
					_ = unix.Fsetxattr(fd, MetadataPrefix+k, []byte(v), 0)
				} else {
					_ = unix.Fremovexattr(fd, MetadataPrefix+k)
				}
			}
			return fmt.Errorf("%w: set %q on %s: %w", ErrMetadata, key, name, metadataErr(err))
		}
		set = append(set, key)
	}
	for key := range old {
		if _, keep := md[key]; keep {
			continue
		}
		if err := unix.Fremovexattr(fd, MetadataPrefix+key); err != nil && !errors.Is(err, unix.ENODATA) {
			return fmt.Errorf("remove metadata %q from %s: %w", key, name, err)
		}
	}
	return nil
}

// metadataErr says what a failed setxattr means for the user.
func metadataErr(err error) error {
	switch {
	case errors.Is(err, unix.ENOTSUP):
		return fmt.Errorf("the filesystem does not support user extended attributes: %w", err)
	case errors.Is(err, unix.E2BIG), errors.Is(err, unix.ENOSPC), errors.Is(err, unix.ERANGE):
		return fmt.Errorf("the metadata is larger than the filesystem holds per file: %w", err)
	}
	return err
}

// xattrNames returns the attribute names list reads; a filesystem without
// extended attributes has none.
func xattrNames(list func([]byte) (int, error)) ([]string, error) {
	buf, err := xattrRead(list)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for name := range bytes.SplitSeq(buf, []byte{0}) {
		if len(name) > 0 {
			names = append(names, string(name))
		}
	}
	return names, nil
}

// xattrValue returns the attribute value get reads.
func xattrValue(get func([]byte) (int, error)) (string, error) {
	buf, err := xattrRead(get)
	return string(buf), err
}

// xattrRead calls call with a buffer as large as it asks for: first with
// none (the size query), then with that size, and again from the start
// when what it reads grew in between (ERANGE).
func xattrRead(call func([]byte) (int, error)) ([]byte, error) {
	for {
		size, err := call(nil)
		if err != nil || size == 0 {
			return nil, err
		}
		buf := make([]byte, size)
		n, err := call(buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}
