package image

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// diskPool keeps sandbox disks of one size formatted ahead of need. Formatting
// runs mkfs.ext4, a process that ends in fsyncs: a few milliseconds on an idle
// host, tens to hundreds under the I/O of twenty creates at once. A create that
// finds a formatted disk renames it into its directory instead. Each file is
// formatted on its own, so every disk keeps its own filesystem UUID.
//
// The pool's files live in one directory that belongs to the Store's process:
// StartDiskPool empties it of whatever an earlier process left, and Close
// removes it. Nothing in it is mounted or attached, so a crash leaves plain
// files only.
type diskPool struct {
	dir    string
	size   uint64
	target int
	log    *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	fills  sync.WaitGroup

	mu      sync.Mutex
	ready   []string // formatted files, oldest first
	seq     int      // names new files
	filling bool     // a refill goroutine runs
	closed  bool
}

// poolDirName is the pool's directory under the Store's run directory.
const poolDirName = "disks"

// StartDiskPool keeps n formatted disks of diskBytes ready for Prepare. It
// removes what an earlier process left in the pool's directory, fills the
// pool for at most warm (so the first creates after a start find disks),
// and refills it in the background from then on, one disk at a time, after
// every Prepare that took one. n = 0 turns the pool off. Call it at most
// once, before serving; Close releases the pool.
func (s *Store) StartDiskPool(ctx context.Context, diskBytes uint64, n int, warm time.Duration) error {
	if n < 0 {
		return fmt.Errorf("%w: disk pool size %d is negative", ErrInvalid, n)
	}
	diskBytes = (diskBytes + 4095) &^ 4095
	if diskBytes < MinDiskBytes {
		return fmt.Errorf("%w: pooled disk size %d below the minimum of %d bytes", ErrInvalid, diskBytes, MinDiskBytes)
	}
	dir := filepath.Join(s.runDir, poolDirName)
	p := &diskPool{dir: dir, size: diskBytes, target: n, log: s.log}
	p.ctx, p.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.mu.Lock()
	if s.pool != nil {
		s.mu.Unlock()
		p.cancel()
		return fmt.Errorf("%w: the disk pool is already started", ErrConflict)
	}
	if n > 0 {
		s.pool = p
	}
	s.mu.Unlock()
	// Until the directory is made, takes find the pool empty and format.
	if err := os.RemoveAll(dir); err != nil {
		p.cancel()
		return fmt.Errorf("empty disk pool %s: %w", dir, err)
	}
	if n == 0 {
		p.cancel()
		return nil
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("create disk pool %s: %w", dir, err)
	}

	warmCtx, cancel := context.WithTimeout(p.ctx, warm)
	defer cancel()
	for p.count() < n {
		if err := p.addOne(warmCtx); err != nil {
			if warmCtx.Err() == nil {
				// Creates format their own disks meanwhile; every
				// take retries the refill.
				s.log.Warn("fill disk pool", "err", err)
			}
			break
		}
	}
	s.log.Info("disk pool started", "disks", p.count(), "target", n, "disk_bytes", diskBytes)
	p.refill()
	return nil
}

// Close stops refilling the disk pool and removes its disks. Prepare keeps
// working without the pool.
func (s *Store) Close() error {
	s.mu.Lock()
	p := s.pool
	s.pool = nil
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	p.mu.Lock()
	p.closed = true
	p.ready = nil
	p.mu.Unlock()
	p.cancel()
	p.fills.Wait()
	if err := os.RemoveAll(p.dir); err != nil {
		return fmt.Errorf("remove disk pool %s: %w", p.dir, err)
	}
	return nil
}

// takePooledDisk moves a formatted disk of diskBytes to path (which must not
// exist) and reports whether it did; false means the caller formats one.
func (s *Store) takePooledDisk(diskBytes uint64, path string) bool {
	s.mu.Lock()
	p := s.pool
	s.mu.Unlock()
	if p == nil || diskBytes != p.size {
		return false
	}
	defer p.refill()
	f := p.take()
	if f == "" {
		return false
	}
	// NOREPLACE: the sandbox's disk is created exclusively, as formatting
	// it in place would be.
	err := unix.Renameat2(unix.AT_FDCWD, f, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	if err == nil {
		return true
	}
	_ = os.Remove(f)
	if !errors.Is(err, unix.EEXIST) {
		// Another filesystem (EXDEV) or a vanished file: format instead.
		s.log.Warn("pooled disk unusable", "file", f, "err", err)
	}
	return false
}

// take removes the oldest ready disk from the pool and returns its path, or
// "" when none is ready.
func (p *diskPool) take() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.ready) == 0 {
		return ""
	}
	f := p.ready[0]
	p.ready = p.ready[1:]
	return f
}

func (p *diskPool) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready)
}

// refill starts a goroutine that formats disks until the pool is full,
// unless one runs already. One at a time, and at the lowest CPU and I/O
// priority: a refill runs right after the creates that took the disks, and
// must not slow their boots.
func (p *diskPool) refill() {
	p.mu.Lock()
	if p.closed || p.filling || len(p.ready) >= p.target {
		p.mu.Unlock()
		return
	}
	p.filling = true
	p.fills.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.fills.Done()
		// Nice value and I/O priority are per thread on Linux, and mkfs is
		// forked from this goroutine's thread, so it inherits both. The
		// thread is never unlocked: it ends with the goroutine rather than
		// serve others at low priority.
		runtime.LockOSThread()
		lowerThreadPriority(p.log)
		// Let the boot that took the disk finish first: mkfs's I/O and
		// fsyncs otherwise land in the middle of it.
		select {
		case <-p.ctx.Done():
		case <-time.After(refillDelay):
		}
		for {
			p.mu.Lock()
			if p.closed || len(p.ready) >= p.target {
				p.filling = false
				p.mu.Unlock()
				return
			}
			p.mu.Unlock()
			if err := p.addOne(p.ctx); err != nil {
				if p.ctx.Err() == nil {
					p.log.Warn("refill disk pool", "err", err)
				}
				p.mu.Lock()
				p.filling = false
				p.mu.Unlock()
				return
			}
		}
	}()
}

// refillDelay is how long a refill waits before its first mkfs: longer
// than a create's boot, which it would slow.
const refillDelay = 200 * time.Millisecond

// ioprioClassIdle is IOPRIO_CLASS_IDLE in ioprio_set's encoding: I/O only
// when no one else wants the disk.
const ioprioClassIdle = 3 << 13

// lowerThreadPriority gives the calling thread nice 19 and idle I/O.
// Failure only costs speed, so it is logged and ignored.
func lowerThreadPriority(log *slog.Logger) {
	if err := unix.Setpriority(unix.PRIO_PROCESS, 0, 19); err != nil {
		log.Debug("lower refill CPU priority", "err", err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOPRIO_SET, 1 /* IOPRIO_WHO_PROCESS */, 0, ioprioClassIdle); errno != 0 {
		log.Debug("lower refill I/O priority", "err", errno)
	}
}

// addOne formats one disk under a temporary name and adds it to the pool.
func (p *diskPool) addOne(ctx context.Context) error {
	p.mu.Lock()
	p.seq++
	name := filepath.Join(p.dir, strconv.Itoa(p.seq))
	p.mu.Unlock()
	tmp := name + ".tmp"
	if err := formatDisk(ctx, tmp, p.size); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	disk := name + ".ext4"
	if err := os.Rename(tmp, disk); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("add disk to pool: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		// Close ran meanwhile; its RemoveAll may have come first.
		_ = os.Remove(disk)
		return context.Canceled
	}
	p.ready = append(p.ready, disk)
	return nil
}

// formatDisk creates path as a sparse file of size bytes holding an empty
// ext4 filesystem. path must not exist.
func formatDisk(ctx context.Context, path string, size uint64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create disk %s: %w", path, err)
	}
	err = f.Truncate(int64(size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("size disk %s to %d bytes: %w", path, size, err)
	}
	// Lazy inode table and journal init: a fresh 1 GiB disk is written in
	// well under a megabyte; the kernel zeroes the rest on first use.
	if err := run(ctx, "mkfs.ext4", "-q", "-b", "4096", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", path); err != nil {
		return fmt.Errorf("format disk %s: %w", strings.TrimSuffix(filepath.Base(path), ".tmp"), err)
	}
	return nil
}
