package oci

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"

	"github.com/wrenn/wrenn/internal/runtime/cgroups"
)

// UserCgroup is the child of every runc sandbox's cgroup that the sandbox
// may manage itself: envd runs user processes, PTYs and forwarded
// connections there (cmd/envd's userCgroupName), so they are accounted
// apart from envd and can be limited below the sandbox's own limits.
const UserCgroup = "wrenn-user"

// delegatedControllers are the v1 controllers whose hierarchy gets a
// delegated child: the ones envd uses (internal/envd/cgroup.V1Controllers).
var delegatedControllers = []string{"memory", "pids", "cpu"}

// delegates reports whether the driver's sandboxes get a cgroup namespace
// and the delegated UserCgroup. Not under gVisor: its cgroupfs is its own,
// and a host cgroup directory bind-mounted in would take sandbox pids as
// host pids.
func (d *Driver) delegates() bool { return d.cfg.Name != RunscName }

// delegatedHierarchies are the host hierarchies a sandbox gets UserCgroup
// in: the unified one on v2, those with a delegated controller on v1.
func (d *Driver) delegatedHierarchies() []cgroups.Hierarchy {
	var out []cgroups.Hierarchy
	for _, h := range d.cg.Hierarchies() {
		switch {
		case d.cg.Mode() == cgroups.V2 && h.Version == 2:
			out = append(out, h)
		case d.cg.Mode() == cgroups.V1 && h.Version == 1 &&
			slices.ContainsFunc(h.Controllers, func(c string) bool { return slices.Contains(delegatedControllers, c) }):
			out = append(out, h)
		}
	}
	return out
}

// delegateCgroups gives spec a cgroup namespace, the sandbox's cgroups
// mounted read-only at /sys/fs/cgroup (so the sandbox sees its own usage
// and limits and cannot change them), and UserCgroup of each delegated
// hierarchy bind-mounted read-write over itself: the sandbox may create
// cgroups below it, move its processes into them and set their limits,
// which the kernel holds under the sandbox's own (hierarchical) limits.
// The directories must exist before the runtime starts: makeUserCgroups.
func (d *Driver) delegateCgroups(spec *ociSpec, id string) {
	spec.Linux.Namespaces = append(spec.Linux.Namespaces, ociNS{Type: "cgroup"})
	spec.Mounts = append(spec.Mounts, ociMnt{
		Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup",
		Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"},
	})
	for _, h := range d.delegatedHierarchies() {
		// runc mounts each v1 hierarchy at the base name of its host mount
		// point (memory, "cpu,cpuacct"), and v2 at /sys/fs/cgroup itself.
		dst := path.Join("/sys/fs/cgroup", filepath.Base(h.Mount), UserCgroup)
		if h.Version == 2 {
			dst = path.Join("/sys/fs/cgroup", UserCgroup)
		}
		spec.Mounts = append(spec.Mounts, ociMnt{
			Destination: dst, Type: "bind", Source: h.Dir(d.CgroupPath(id) + "/" + UserCgroup),
			Options: []string{"rbind", "rw", "nosuid", "noexec", "nodev"},
		})
	}
}

// makeUserCgroups creates the sandbox's cgroup and its UserCgroup in each
// delegated hierarchy, ahead of the runtime (which reuses an existing
// cgroup). Destroy's cgroup sweep removes them with the sandbox's.
func (d *Driver) makeUserCgroups(id string) error {
	for _, h := range d.delegatedHierarchies() {
		dir := h.Dir(d.CgroupPath(id) + "/" + UserCgroup)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create the user cgroup %s: %w", dir, err)
		}
	}
	return nil
}
