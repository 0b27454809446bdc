package watch

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrNetworkFS marks a directory on a network filesystem that the caller
// did not allow watching.
var ErrNetworkFS = errors.New("network filesystem")

// networkFilesystems are the filesystems whose changes inotify sees only
// when they are made through this machine: a file another client of the
// share writes raises no event. E2B's envd refuses to watch them unless
// asked to (allow_network_mounts), and so does Wrenn's. 9p is not among
// them: gVisor serves a sandbox's own root over it, and what the sandbox
// changes there is seen.
var networkFilesystems = map[int64]string{
	unix.NFS_SUPER_MAGIC:  "nfs",
	unix.SMB_SUPER_MAGIC:  "smb",
	unix.SMB2_SUPER_MAGIC: "smb2",
	unix.CIFS_SUPER_MAGIC: "cifs",
	unix.FUSE_SUPER_MAGIC: "fuse",
	unix.CEPH_SUPER_MAGIC: "ceph",
	unix.AFS_FS_MAGIC:     "afs",
	unix.AFS_SUPER_MAGIC:  "afs",
	unix.CODA_SUPER_MAGIC: "coda",
}

// NetworkFilesystem returns the name of the network filesystem path is on,
// or "" when it is on a local one.
func NetworkFilesystem(path string) (string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "", fmt.Errorf("watch %s: statfs: %w", path, err)
	}
	return networkFilesystems[int64(st.Type)], nil
}
