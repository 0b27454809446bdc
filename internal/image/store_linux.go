package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Names inside a sandbox's directory.
const (
	diskFile   = "disk.ext4"
	diskMount  = "disk"
	rootfsName = "rootfs"
	upperName  = "upper"
	workName   = "work"
)

// MinDiskBytes is the smallest sandbox disk Prepare accepts: below it an
// ext4 with a journal barely leaves room for files.
const MinDiskBytes = 8 << 20

// Store hands out copy-on-write root filesystems built on templates. It is
// safe for concurrent use; operations on one sandbox must not overlap.
type Store struct {
	imagesDir string
	runDir    string
	log       *slog.Logger

	// opMu lets Prepare, Adopt and Release run together but never while
	// CleanupOrphans decides what is orphaned, so a root filesystem being
	// prepared is never taken for a leftover.
	opMu sync.RWMutex

	mu        sync.Mutex
	templates map[string]*templateState
	active    map[string]bool // sandbox ids with a RootFS held in this process
	pool      *diskPool       // formatted disks; nil until StartDiskPool
}

// templateState counts the sandboxes using one template mount. Its mutex
// serialises mounting, unmounting and resizing of that template, so a
// resize never runs under a mounted image.
type templateState struct {
	mu   sync.Mutex
	refs int
}

// record is what Prepare writes under <runDir>/sandboxes so that a later
// process can find and clean up a sandbox's mounts without the agent's
// state.
type record struct {
	SandboxID string `json:"sandbox_id"`
	Template  string `json:"template"`
	Dir       string `json:"dir"`
}

// NewStore returns a Store for templates under imagesDir, keeping its
// shared mounts and bookkeeping under runDir (created if missing).
func NewStore(imagesDir, runDir string, log *slog.Logger) (*Store, error) {
	if !filepath.IsAbs(imagesDir) || !filepath.IsAbs(runDir) {
		return nil, fmt.Errorf("%w: images dir %q and run dir %q must be absolute", ErrInvalid, imagesDir, runDir)
	}
	// Both end up in overlay mount options, which ',' and ':' would split.
	if strings.ContainsAny(imagesDir+runDir, ",:\n") {
		return nil, fmt.Errorf("%w: images dir %q and run dir %q may not contain ',', ':' or newlines", ErrInvalid, imagesDir, runDir)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{runDir, filepath.Join(runDir, "templates"), filepath.Join(runDir, "sandboxes")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	return &Store{
		imagesDir: filepath.Clean(imagesDir),
		runDir:    filepath.Clean(runDir),
		log:       log,
		templates: map[string]*templateState{},
		active:    map[string]bool{},
	}, nil
}

// TemplatePath is where template's image file lives.
func (s *Store) TemplatePath(template string) string {
	return filepath.Join(s.imagesDir, template, "rootfs.ext4")
}

func (s *Store) templateMount(template string) string {
	return filepath.Join(s.runDir, "templates", template)
}

func (s *Store) recordPath(sandboxID string) string {
	return filepath.Join(s.runDir, "sandboxes", sandboxID+".json")
}

// Exists reports whether template is a valid name with an image file.
func (s *Store) Exists(template string) bool {
	if !ValidTemplateName(template) {
		return false
	}
	fi, err := os.Stat(s.TemplatePath(template))
	return err == nil && fi.Mode().IsRegular()
}

func (s *Store) state(template string) *templateState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.templates[template]
	if !ok {
		st = &templateState{}
		s.templates[template] = st
	}
	return st
}

// RootFS is one sandbox's mounted copy-on-write root filesystem.
type RootFS struct {
	store     *Store
	sandboxID string
	template  string
	dir       string

	mu       sync.Mutex
	released bool
}

// Path is the overlay mountpoint to give the runtime as the root.
func (r *RootFS) Path() string { return filepath.Join(r.dir, rootfsName) }

// Template is the template the root filesystem is built on.
func (r *RootFS) Template() string { return r.template }

func checkArgs(sandboxID, template, dir string) error {
	if !validName(sandboxID, 63) {
		return fmt.Errorf("%w: sandbox id %q", ErrInvalid, sandboxID)
	}
	if !ValidTemplateName(template) {
		return fmt.Errorf("%w: template name %q (lowercase letters, digits, '-', '_', '.', at most 63)", ErrInvalid, template)
	}
	// Overlay options are comma-separated and use ':' between lower layers.
	if !filepath.IsAbs(dir) || strings.ContainsAny(dir, ",:\n") {
		return fmt.Errorf("%w: sandbox dir %q must be absolute and free of ',', ':' and newlines", ErrInvalid, dir)
	}
	return nil
}

// Prepare builds sandboxID's root filesystem from template in dir with a
// writable layer of diskBytes, and returns it mounted. On any failure
// everything taken so far is released in reverse order.
func (s *Store) Prepare(ctx context.Context, sandboxID, template string, diskBytes uint64, dir string) (_ *RootFS, err error) {
	if err := checkArgs(sandboxID, template, dir); err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	if diskBytes < MinDiskBytes {
		return nil, fmt.Errorf("%w: disk size %d below the minimum of %d bytes", ErrInvalid, diskBytes, MinDiskBytes)
	}
	diskBytes = (diskBytes + 4095) &^ 4095
	if !s.Exists(template) {
		return nil, fmt.Errorf("template %q: %w", template, ErrNotFound)
	}
	log := s.log.With("sandbox_id", sandboxID)
	s.opMu.RLock()
	defer s.opMu.RUnlock()

	var undo []func() error
	defer func() {
		if err == nil {
			return
		}
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				log.Warn("root filesystem cleanup failed", "err", uerr)
			}
		}
	}()

	s.mu.Lock()
	if s.active[sandboxID] {
		s.mu.Unlock()
		return nil, fmt.Errorf("sandbox %s: %w", sandboxID, ErrConflict)
	}
	s.active[sandboxID] = true
	s.mu.Unlock()
	undo = append(undo, func() error { s.setActive(sandboxID, false); return nil })

	// The record goes first: whatever is mounted after it can be found by
	// CleanupOrphans even if this process dies half-way.
	if err := s.writeRecord(record{SandboxID: sandboxID, Template: template, Dir: dir}, true); err != nil {
		return nil, err
	}
	undo = append(undo, func() error { return removeIfExists(s.recordPath(sandboxID)) })

	lower, err := s.acquire(template, false)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() error { return s.release(template) })

	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create sandbox dir %s: %w", dir, err)
		}
		undo = append(undo, func() error { return removeIfExists(dir) })
	}
	disk := filepath.Join(dir, diskFile)
	if !s.takePooledDisk(diskBytes, disk) {
		if err := formatDisk(ctx, disk, diskBytes); err != nil {
			if !errors.Is(err, os.ErrExist) {
				_ = removeIfExists(disk)
			}
			return nil, fmt.Errorf("disk of %s: %w", sandboxID, err)
		}
	}
	undo = append(undo, func() error { return removeIfExists(disk) })

	diskDir := filepath.Join(dir, diskMount)
	if err := os.Mkdir(diskDir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", diskDir, err)
	}
	undo = append(undo, func() error { return removeIfExists(diskDir) })
	if err := mountLoop(disk, diskDir, false); err != nil {
		return nil, err
	}
	undo = append(undo, func() error {
		if err := unmountAll(diskDir); err != nil {
			return err
		}
		return waitLoopsFreed(disk)
	})
	upper, work := filepath.Join(diskDir, upperName), filepath.Join(diskDir, workName)
	for _, d := range []string{upper, work} {
		// 0755: the upper directory's mode becomes the sandbox's "/".
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}

	root := filepath.Join(dir, rootfsName)
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, fmt.Errorf("create mountpoint %s: %w", root, err)
	}
	undo = append(undo, func() error { return removeIfExists(root) })
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := mountOverlay(root, opts); err != nil {
		return nil, err
	}
	log.Debug("root filesystem ready", "template", template, "path", root, "disk_bytes", diskBytes)
	return &RootFS{store: s, sandboxID: sandboxID, template: template, dir: dir}, nil
}

// Release unmounts the overlay, then the disk (which frees its loop
// device), removes the files Prepare made and drops the template
// reference. It is idempotent. If an unmount fails nothing is deleted and
// Release can be retried.
func (r *RootFS) Release(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.released {
		return nil
	}
	s := r.store
	s.opMu.RLock()
	defer s.opMu.RUnlock()
	if err := s.teardown(r.dir); err != nil {
		return fmt.Errorf("release root filesystem of %s: %w", r.sandboxID, err)
	}
	if err := removeIfExists(s.recordPath(r.sandboxID)); err != nil {
		return err
	}
	r.released = true
	s.setActive(r.sandboxID, false)
	if err := s.release(r.template); err != nil {
		// The sandbox's own parts are gone; a busy template mount is
		// retried by CleanupOrphans.
		s.log.Warn("template unmount failed", "sandbox_id", r.sandboxID, "template", r.template, "err", err)
	}
	s.log.Debug("root filesystem released", "sandbox_id", r.sandboxID)
	return nil
}

// teardown removes a sandbox's overlay, disk mount and files in dir, in
// that order, stopping at the first unmount that fails.
func (s *Store) teardown(dir string) error {
	root := filepath.Join(dir, rootfsName)
	diskDir := filepath.Join(dir, diskMount)
	disk := filepath.Join(dir, diskFile)
	if err := unmountAll(root); err != nil {
		return err
	}
	if err := unmountAll(diskDir); err != nil {
		return err
	}
	if err := waitLoopsFreed(disk); err != nil {
		return err
	}
	var errs []error
	for _, p := range []string{disk, diskDir, root} {
		if err := removeIfExists(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Adopt takes back a root filesystem that a previous agent prepared and
// that is still mounted, counting its template use again.
func (s *Store) Adopt(ctx context.Context, sandboxID, template, dir string) (*RootFS, error) {
	if err := checkArgs(sandboxID, template, dir); err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	s.opMu.RLock()
	defer s.opMu.RUnlock()
	mounts, err := readMounts()
	if err != nil {
		return nil, err
	}
	if m, ok := mountAt(mounts, filepath.Join(dir, rootfsName)); !ok || m.FSType != "overlay" {
		return nil, fmt.Errorf("adopt root filesystem of %s: no overlay mounted in %s: %w", sandboxID, dir, ErrNotFound)
	}
	s.mu.Lock()
	if s.active[sandboxID] {
		s.mu.Unlock()
		return nil, fmt.Errorf("adopt sandbox %s: %w", sandboxID, ErrConflict)
	}
	s.active[sandboxID] = true
	s.mu.Unlock()
	if err := s.writeRecord(record{SandboxID: sandboxID, Template: template, Dir: dir}, false); err != nil {
		s.setActive(sandboxID, false)
		return nil, err
	}
	if _, err := s.acquire(template, true); err != nil {
		s.setActive(sandboxID, false)
		return nil, err
	}
	return &RootFS{store: s, sandboxID: sandboxID, template: template, dir: dir}, nil
}

// CleanupOrphans releases the root filesystems of sandboxes that are
// neither in keep nor held by this Store, and unmounts template mounts that
// no sandbox uses. Kept sandboxes need not be adopted first. It waits for
// running Prepare, Adopt and Release calls and holds new ones back.
func (s *Store) CleanupOrphans(ctx context.Context, keep map[string]bool) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.mu.Lock()
	live := map[string]bool{}
	for id := range s.active {
		live[id] = true
	}
	s.mu.Unlock()
	for id := range keep {
		live[id] = true
	}

	var errs []error
	liveDirs := map[string]bool{}
	entries, err := os.ReadDir(filepath.Join(s.runDir, "sandboxes"))
	if err != nil {
		errs = append(errs, fmt.Errorf("list sandbox records: %w", err))
	}
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		rec, err := s.readRecord(id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if live[id] {
			liveDirs[rec.Dir] = true
			continue
		}
		if err := s.teardown(rec.Dir); err != nil {
			errs = append(errs, fmt.Errorf("clean up root filesystem of %s: %w", id, err))
			continue
		}
		if err := removeIfExists(s.recordPath(id)); err != nil {
			errs = append(errs, err)
			continue
		}
		s.log.Info("removed orphan root filesystem", "sandbox_id", id, "dir", rec.Dir)
	}

	// Overlays on our templates without a live record (their record was
	// lost) are orphans too.
	mounts, err := readMounts()
	if err != nil {
		errs = append(errs, err)
	}
	lowerPrefix := "lowerdir=" + filepath.Join(s.runDir, "templates") + "/"
	for _, m := range mounts {
		if m.FSType != "overlay" || !strings.Contains(m.SuperOpts, lowerPrefix) || filepath.Base(m.Mountpoint) != rootfsName {
			continue
		}
		dir := filepath.Dir(m.Mountpoint)
		if liveDirs[dir] {
			continue
		}
		if err := s.teardown(dir); err != nil {
			errs = append(errs, fmt.Errorf("clean up unrecorded overlay %s: %w", m.Mountpoint, err))
			continue
		}
		s.log.Info("removed unrecorded root filesystem", "dir", dir)
	}

	tmpls, err := os.ReadDir(filepath.Join(s.runDir, "templates"))
	if err != nil {
		errs = append(errs, fmt.Errorf("list template mounts: %w", err))
	}
	for _, e := range tmpls {
		if !ValidTemplateName(e.Name()) {
			continue
		}
		st := s.state(e.Name())
		st.mu.Lock()
		if st.refs == 0 {
			// Busy: a kept sandbox not adopted (yet) still sits on it.
			if err := s.unmountTemplate(e.Name()); err != nil && !errors.Is(err, ErrBusy) {
				errs = append(errs, err)
			}
		}
		st.mu.Unlock()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up orphan root filesystems: %w", err)
	}
	return nil
}

// acquire counts one more user of template, mounting it on first use, and
// returns the mountpoint. A mount left by a previous process is reused
// when it still shows the current image file, or always when adopting
// (the adopted overlay already sits on it); a missing one is mounted.
func (s *Store) acquire(template string, adopting bool) (string, error) {
	st := s.state(template)
	st.mu.Lock()
	defer st.mu.Unlock()
	mp := s.templateMount(template)
	if st.refs > 0 {
		st.refs++
		return mp, nil
	}
	mounts, err := readMounts()
	if err != nil {
		return "", err
	}
	if m, ok := mountAt(mounts, mp); ok {
		if adopting || s.showsCurrentImage(m, template) {
			st.refs++
			return mp, nil
		}
		if err := unmountAll(mp); err != nil {
			return "", fmt.Errorf("replace stale mount of template %s: %w", template, err)
		}
	}
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return "", fmt.Errorf("create template mountpoint %s: %w", mp, err)
	}
	if err := mountLoop(s.TemplatePath(template), mp, true); err != nil {
		_ = os.Remove(mp)
		return "", fmt.Errorf("mount template %s: %w", template, err)
	}
	st.refs++
	return mp, nil
}

// showsCurrentImage reports whether a template mount's loop device is
// backed by the image file now at the template's path (not a replaced,
// deleted one).
func (s *Store) showsCurrentImage(m mountEntry, template string) bool {
	dev := strings.TrimPrefix(m.Source, "/dev/")
	b, err := os.ReadFile(filepath.Join("/sys/block", dev, "loop", "backing_file"))
	if err != nil {
		return false
	}
	want := s.TemplatePath(template)
	if r, err := filepath.EvalSymlinks(want); err == nil {
		want = r
	}
	return strings.TrimSpace(string(b)) == want
}

// release drops one user of template and unmounts it after the last.
func (s *Store) release(template string) error {
	st := s.state(template)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.refs > 0 {
		st.refs--
	}
	if st.refs > 0 {
		return nil
	}
	return s.unmountTemplate(template)
}

// unmountTemplate unmounts a template and removes its mountpoint; the
// caller holds the template's lock and has checked it has no users.
//
// Overlays clone their lower mount privately, so unmounting a template
// under a live overlay succeeds while its loop device stays bound to the
// overlay's clone. The mount table is therefore checked for overlays on the
// template (sandboxes a restarted agent has not adopted) and the unmount
// refused with ErrBusy while there are any.
func (s *Store) unmountTemplate(template string) error {
	mp := s.templateMount(template)
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	if users := overlaysOn(mounts, mp); len(users) > 0 {
		return fmt.Errorf("unmount template %s: overlays %v use it: %w", template, users, ErrBusy)
	}
	if err := unmountAll(mp); err != nil {
		return fmt.Errorf("unmount template %s: %w", template, err)
	}
	if err := waitLoopsFreed(s.TemplatePath(template)); err != nil {
		return fmt.Errorf("free loop device of template %s: %w", template, err)
	}
	return removeIfExists(mp)
}

func (s *Store) setActive(sandboxID string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if on {
		s.active[sandboxID] = true
	} else {
		delete(s.active, sandboxID)
	}
}

func (s *Store) writeRecord(rec record, exclusive bool) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode record of %s: %w", rec.SandboxID, err)
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if exclusive {
		flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL
	}
	p := s.recordPath(rec.SandboxID)
	f, err := os.OpenFile(p, flags, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("sandbox %s has a root filesystem record at %s: %w", rec.SandboxID, p, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("write record of %s: %w", rec.SandboxID, err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write record of %s: %w", rec.SandboxID, err)
	}
	return nil
}

func (s *Store) readRecord(sandboxID string) (record, error) {
	var rec record
	b, err := os.ReadFile(s.recordPath(sandboxID))
	if err != nil {
		return rec, fmt.Errorf("read record of %s: %w", sandboxID, err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("decode record of %s: %w", sandboxID, err)
	}
	if rec.SandboxID != sandboxID || checkArgs(rec.SandboxID, rec.Template, rec.Dir) != nil {
		return rec, fmt.Errorf("record of %s: %w", sandboxID, ErrInvalid)
	}
	return rec, nil
}

// EnsureSize grows template's image to at least bytes (sparse) and its
// filesystem with it. It refuses with ErrBusy while sandboxes use the
// template; an image already that large is left alone.
func (s *Store) EnsureSize(ctx context.Context, template string, bytes uint64) error {
	if !s.Exists(template) {
		return fmt.Errorf("template %q: %w", template, ErrNotFound)
	}
	return s.offline(template, func(path string) error {
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("stat %s: %w", path, err)
		}
		if uint64(fi.Size()) >= bytes {
			return nil
		}
		if err := os.Truncate(path, int64(bytes)); err != nil {
			return fmt.Errorf("extend %s to %d bytes: %w", path, bytes, err)
		}
		if err := fsck(ctx, path); err != nil {
			return err
		}
		if err := run(ctx, "resize2fs", path); err != nil {
			return fmt.Errorf("grow filesystem of template %s: %w", template, err)
		}
		s.log.Info("template grown", "template", template, "bytes", bytes)
		return nil
	})
}

// Shrink shrinks template's filesystem to its minimum and truncates the
// image file to match. It refuses with ErrBusy while sandboxes use it.
func (s *Store) Shrink(ctx context.Context, template string) error {
	if !s.Exists(template) {
		return fmt.Errorf("template %q: %w", template, ErrNotFound)
	}
	return s.offline(template, func(path string) error {
		if err := fsck(ctx, path); err != nil {
			return err
		}
		if err := run(ctx, "resize2fs", "-M", path); err != nil {
			return fmt.Errorf("shrink filesystem of template %s: %w", template, err)
		}
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("open %s: %w", path, err)
		}
		size, err := ext4Size(f)
		_ = f.Close()
		if err != nil {
			return fmt.Errorf("read size of %s: %w", path, err)
		}
		if err := os.Truncate(path, int64(size)); err != nil {
			return fmt.Errorf("truncate %s to %d bytes: %w", path, size, err)
		}
		s.log.Info("template shrunk", "template", template, "bytes", size)
		return nil
	})
}

// offline runs fn on template's image while holding the template's lock,
// after making sure no sandbox uses it and no mount is left.
func (s *Store) offline(template string, fn func(path string) error) error {
	st := s.state(template)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.refs > 0 {
		return fmt.Errorf("resize template %s: %d sandboxes use it: %w", template, st.refs, ErrBusy)
	}
	if err := s.unmountTemplate(template); err != nil {
		return fmt.Errorf("resize template %s: %w", template, err)
	}
	return fn(s.TemplatePath(template))
}

// fsck runs a forced e2fsck that repairs what it can. Exit codes 1 and 2
// mean errors were corrected.
func fsck(ctx context.Context, path string) error {
	err := run(ctx, "e2fsck", "-fy", path)
	var ee *exec.ExitError
	if errors.As(err, &ee) && (ee.ExitCode() == 1 || ee.ExitCode() == 2) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check filesystem %s: %w", path, err)
	}
	return nil
}

// run executes an e2fsprogs tool, found in PATH or the sbin directories
// (which a daemon's PATH may lack).
func run(ctx context.Context, tool string, args ...string) error {
	bin, err := exec.LookPath(tool)
	if err != nil {
		for _, d := range []string{"/usr/sbin", "/sbin"} {
			if _, serr := os.Stat(filepath.Join(d, tool)); serr == nil {
				bin, err = filepath.Join(d, tool), nil
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("find %s (install e2fsprogs): %w", tool, err)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// mountOverlay mounts an overlay at target with the given options.
func mountOverlay(target, opts string) error {
	if err := mountFS("overlay", target, "overlay", opts); err != nil {
		return fmt.Errorf("mount overlay at %s: %w", target, err)
	}
	return nil
}
