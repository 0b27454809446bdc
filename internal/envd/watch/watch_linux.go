// Package watch reports changes below a directory with inotify, with the
// event vocabulary of E2B's filesystem service (create, write, remove,
// rename, chmod) and names relative to the watched directory.
package watch

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrInvalid marks a path that cannot be watched (not a directory).
var ErrInvalid = errors.New("invalid watch request")

// ErrLimit means the kernel's inotify limits were reached
// (fs.inotify.max_user_instances or max_user_watches).
var ErrLimit = errors.New("inotify limit reached")

// Op is what happened to an entry.
type Op int

// Operations, as fsnotify names them.
const (
	Create Op = iota + 1
	Write
	Remove
	Rename
	Chmod
)

// Event is one change. Name is relative to the watched directory; Path is
// absolute.
type Event struct {
	Name string
	Path string
	Op   Op
}

const mask = unix.IN_CREATE | unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_DELETE | unix.IN_DELETE_SELF |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_MOVE_SELF | unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW

// Watcher watches one directory, and with recursion every directory below
// it, including ones created later.
type Watcher struct {
	root      string
	recursive bool
	f         *os.File // the inotify descriptor, through the poller

	mu   sync.Mutex
	dirs map[int32]string // watch descriptor → directory

	events chan Event
	once   sync.Once
	done   chan struct{}
}

// New starts watching root. Events arrive on Events until Close, or until
// root itself is removed or moved away.
func New(root string, recursive bool) (*Watcher, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", root, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: watch %s: not a directory", ErrInvalid, root)
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.EMFILE) {
			return nil, fmt.Errorf("%w: watch %s: %w", ErrLimit, root, err)
		}
		return nil, fmt.Errorf("watch %s: inotify: %w", root, err)
	}
	w := &Watcher{
		root: filepath.Clean(root), recursive: recursive,
		f:      os.NewFile(uintptr(fd), "inotify"),
		dirs:   map[int32]string{},
		events: make(chan Event, 256),
		done:   make(chan struct{}),
	}
	if err := w.add(w.root); err != nil {
		_ = w.f.Close()
		return nil, err
	}
	if recursive {
		if err := w.addTree(w.root); err != nil {
			_ = w.f.Close()
			return nil, err
		}
	}
	go w.read()
	return w, nil
}

// Events returns the channel of changes; it is closed when watching ends.
func (w *Watcher) Events() <-chan Event { return w.events }

// Close stops watching and releases the inotify descriptor.
func (w *Watcher) Close() error {
	w.once.Do(func() { close(w.done) })
	err := w.f.Close()
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}

func (w *Watcher) add(dir string) error {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	var wd int
	var aerr error
	if err := rc.Control(func(fd uintptr) { wd, aerr = unix.InotifyAddWatch(int(fd), dir, mask) }); err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	if aerr != nil {
		if errors.Is(aerr, unix.ENOSPC) {
			return fmt.Errorf("%w: watch %s: %w", ErrLimit, dir, aerr)
		}
		return fmt.Errorf("watch %s: %w", dir, aerr)
	}
	w.mu.Lock()
	w.dirs[int32(wd)] = dir
	w.mu.Unlock()
	return nil
}

// addTree watches every directory below dir. Directories that vanish or
// refuse access while walking are skipped: the tree is live.
func (w *Watcher) addTree(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
				return nil
			}
			return err
		}
		if !d.IsDir() || p == dir {
			return nil
		}
		if err := w.add(p); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EACCES) {
			return err
		}
		return nil
	})
}

func (w *Watcher) read() {
	defer close(w.events)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return // closed
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(raw.Len)]
			off += unix.SizeofInotifyEvent + int(raw.Len)
			name := string(bytes.TrimRight(nameBytes, "\x00"))
			if !w.handle(raw.Wd, raw.Mask, name) {
				return
			}
		}
	}
}

// handle turns one inotify record into events; false ends the watch.
func (w *Watcher) handle(wd int32, m uint32, name string) bool {
	w.mu.Lock()
	dir, ok := w.dirs[wd]
	if m&unix.IN_IGNORED != 0 {
		delete(w.dirs, wd)
	}
	w.mu.Unlock()
	if !ok {
		return true
	}
	isRoot := dir == w.root
	if name == "" {
		// An event about the watched directory itself.
		if isRoot && m&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0 {
			return false
		}
		return true // subdirectories report through their parents
	}
	p := filepath.Join(dir, name)
	rel, err := filepath.Rel(w.root, p)
	if err != nil {
		return true
	}
	var ops []Op
	switch {
	case m&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
		ops = append(ops, Create)
		if w.recursive && m&unix.IN_ISDIR != 0 {
			// Watch the new directory; anything made in it before the
			// watch exists is missed, as with any inotify tool.
			if err := w.add(p); err == nil {
				_ = w.addTree(p)
			}
		}
	case m&unix.IN_DELETE != 0:
		ops = append(ops, Remove)
	case m&unix.IN_MOVED_FROM != 0:
		ops = append(ops, Rename)
	}
	if m&unix.IN_MODIFY != 0 {
		ops = append(ops, Write)
	}
	if m&unix.IN_ATTRIB != 0 {
		ops = append(ops, Chmod)
	}
	for _, op := range ops {
		select {
		case w.events <- Event{Name: rel, Path: p, Op: op}:
		case <-w.done:
			return false
		}
	}
	return true
}
