package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestLoopAttachUnderContention attaches and mounts many disks at once, in
// waves, each wave reusing the loop devices the previous one freed by
// unmounting (autoclear), as waves of concurrent creates and destroys do.
// The kernel hands every concurrent LOOP_CTL_GET_FREE the same lowest free
// device, so all but one caller lose the race each time.
func TestLoopAttachUnderContention(t *testing.T) {
	t.Parallel()
	requireRootTools(t)
	root := t.TempDir()
	const n, waves = 24, 4
	disks := make([]string, n)
	for i := range disks {
		disks[i] = filepath.Join(root, fmt.Sprintf("d%d.ext4", i))
		if err := formatDisk(context.Background(), disks[i], MinDiskBytes); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(disks[i]+".mnt", 0o700); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, d := range disks {
			_ = unmountAll(d + ".mnt")
		}
		assertNothingUnder(t, root)
	})
	for wave := range waves {
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, d := range disks {
			wg.Go(func() { errs[i] = mountLoop(d, d+".mnt", false) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("wave %d: disk %d: %v", wave, i, err)
			}
		}
		for _, d := range disks {
			if err := unmountAll(d + ".mnt"); err != nil {
				t.Fatal(err)
			}
		}
		if t.Failed() {
			return
		}
	}
	for _, d := range disks {
		if err := waitLoopsFreed(d); err != nil {
			t.Error(err)
		}
	}
}
