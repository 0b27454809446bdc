// Package image turns template ext4 images into per-sandbox copy-on-write
// root filesystems for OCI runtimes.
//
// Each template <imagesDir>/<name>/rootfs.ext4 is loop-mounted read-only
// once, at <runDir>/templates/<name>, and shared by every sandbox that uses
// it. Each sandbox gets a sparse ext4 file of its disk size, loop-mounted,
// holding the upper and work directories of an overlay whose lower layer is
// the template: writes land in the sandbox's own file, a full disk is ENOSPC
// for that sandbox only, and the template is never modified.
//
// Loop devices are attached with autoclear, so unmounting is what frees
// them; nothing depends on the agent process staying alive to detach them.
package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Errors callers branch on with errors.Is.
var (
	// ErrInvalid means a template name, sandbox id, path or size is unusable.
	ErrInvalid = errors.New("invalid image argument")
	// ErrNotFound means the template, or an adopted root filesystem, does
	// not exist.
	ErrNotFound = errors.New("image not found")
	// ErrBusy means a template is in use by sandboxes and cannot be resized.
	ErrBusy = errors.New("image in use")
	// ErrConflict means the sandbox already has a root filesystem.
	ErrConflict = errors.New("root filesystem already prepared")
)

// ValidTemplateName reports whether name can be used as a template name: it
// becomes a directory name under the images and run directories, so it must
// be one path element that cannot climb out of them.
func ValidTemplateName(name string) bool {
	return validName(name, 63)
}

// validName accepts [a-z0-9][a-z0-9-_.]{0,max-1}.
func validName(name string, max int) bool {
	if len(name) == 0 || len(name) > max {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '-' || c == '_' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// ext4Size reads an ext4 superblock and returns the filesystem's size in
// bytes (block count × block size).
func ext4Size(r io.ReaderAt) (uint64, error) {
	var sb [1024]byte
	if _, err := r.ReadAt(sb[:], 1024); err != nil {
		return 0, fmt.Errorf("read ext4 superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != 0xEF53 {
		return 0, fmt.Errorf("%w: no ext4 superblock magic", ErrInvalid)
	}
	logBlock := le.Uint32(sb[0x18:])
	if logBlock > 6 { // block sizes 1 KiB … 64 KiB
		return 0, fmt.Errorf("%w: ext4 block size 2^(10+%d)", ErrInvalid, logBlock)
	}
	blocks := uint64(le.Uint32(sb[0x4:]))
	const incompat64bit = 0x80
	if le.Uint32(sb[0x60:])&incompat64bit != 0 {
		blocks |= uint64(le.Uint32(sb[0x150:])) << 32
	}
	return blocks << (10 + logBlock), nil
}

// mountEntry is one line of /proc/self/mountinfo, the parts we use.
type mountEntry struct {
	Mountpoint string
	FSType     string
	Source     string
	SuperOpts  string
}

// parseMountinfo parses /proc/<pid>/mountinfo text.
func parseMountinfo(text string) []mountEntry {
	var out []mountEntry
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		sep := -1
		for i, v := range f {
			if v == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || len(f) < sep+4 {
			continue
		}
		out = append(out, mountEntry{
			Mountpoint: unescapeMount(f[4]),
			FSType:     f[sep+1],
			Source:     unescapeMount(f[sep+2]),
			SuperOpts:  f[sep+3],
		})
	}
	return out
}

// unescapeMount undoes the kernel's octal escapes (\040 for space, …).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// readMounts returns the calling process's mount table.
func readMounts() ([]mountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return parseMountinfo(string(b)), nil
}

// mountAt returns the topmost mount at path, if any.
func mountAt(mounts []mountEntry, path string) (mountEntry, bool) {
	var found mountEntry
	ok := false
	for _, m := range mounts {
		if m.Mountpoint == path {
			found, ok = m, true // later lines are mounted on top
		}
	}
	return found, ok
}

// overlaysOn lists the mountpoints of overlays that use dir as a lower
// layer.
func overlaysOn(mounts []mountEntry, dir string) []string {
	var out []string
	for _, m := range mounts {
		if m.FSType != "overlay" {
			continue
		}
		for _, opt := range strings.Split(m.SuperOpts, ",") {
			lower, ok := strings.CutPrefix(opt, "lowerdir=")
			if ok && slices.Contains(strings.Split(lower, ":"), dir) {
				out = append(out, m.Mountpoint)
			}
		}
	}
	return out
}
