package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn/wrenn/internal/envdclient"
	"github.com/wrenn/wrenn/internal/runtime/oci"
	"github.com/wrenn/wrenn/pkg/id"
)

// BenchmarkCreateRawVsWrenn sets Wrenn's create → first command on runc
// beside the raw cost of the same work, alternating the two in one run so
// both see the same machine load.
//
// Raw is what the agent does minus Wrenn, with the real tools and nothing
// else: a sparse ext4 file made by mkfs.ext4, loop-attached and mounted,
// an overlay of it on the (already mounted, as the agent's shared template
// is) read-only template, and `runc run -d` of the image's wrenn-init with
// `runc spec`'s defaults plus the agent's capabilities and limits, polled
// every millisecond until envd answers /health in a network namespace the
// test made. Wrenn is POST /v1/sandboxes until the event stream says it
// runs and a read of it confirms so, then the first exec of `true`, all
// through the REST API. The target is wrenn-p50 ≤ 1.5 × raw-p50.
//
// Beside the totals it reports their parts: raw's `runc run` alone, a
// second exec in the same sandbox (what a first one costs above it), and
// the p50 of each step of the agent's own log line for the create.
func BenchmarkCreateRawVsWrenn(b *testing.B) {
	s := startStack(b)
	b.Cleanup(func() {
		if b.Failed() {
			cp, _ := os.ReadFile(filepath.Join(s.dir, "control-plane.stderr"))
			if len(cp) > 3000 {
				cp = cp[len(cp)-3000:]
			}
			b.Logf("host agent says:\n%s\ncontrol plane says:\n%s", s.agent.tail(), cp)
		}
	})
	img := requirements(b, "runc")
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		b.Skip("mkfs.ext4 not found: apt-get install e2fsprogs")
	}
	r := newRawRunc(b, img)

	var raw, wrenn, rawDisk, rawRunc, rawRuncRun, wrennRunning, wrennExec, wrennExec2 []time.Duration
	w := s.watchStatus()
	b.Cleanup(w.close)
	b.ResetTimer()
	rawOnce := func(i int) {
		d, disk, runcRun, run := r.once(b, i)
		raw, rawDisk, rawRunc, rawRuncRun = append(raw, d), append(rawDisk, disk), append(rawRunc, run), append(rawRuncRun, runcRun)
	}
	wrennOnce := func() {
		start := time.Now()
		var sb sandbox
		s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal"}, http.StatusAccepted, &sb)
		if err := w.waitRunning(sb.ID, time.Minute); err != nil {
			b.Fatal(err)
		}
		running := time.Since(start)
		var res execResult
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+sb.ID+"/exec", map[string]any{"cmd": "true"}, http.StatusOK, &res)
		total := time.Since(start)
		if res.ExitCode != 0 {
			b.Fatalf("true exited %d in %s", res.ExitCode, sb.ID)
		}
		wrenn, wrennRunning, wrennExec = append(wrenn, total), append(wrennRunning, running), append(wrennExec, total-running)
		b.StopTimer()
		second := time.Now()
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+sb.ID+"/exec", map[string]any{"cmd": "true"}, http.StatusOK, &res)
		wrennExec2 = append(wrennExec2, time.Since(second))
		s.mustDo(http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil, http.StatusAccepted, nil)
		s.waitStatus(sb.ID, "stopped", time.Minute)
		b.StartTimer()
	}
	pool := filepath.Join(s.dir, "run", "disks")
	full := readyDisks(b, pool)
	// Each side starts with the agent's disk pool full: the refill after a
	// create runs mkfs, which neither side should meet.
	quiet := func() {
		b.StopTimer()
		waitDisks(b, pool, full)
		b.StartTimer()
	}
	for i := range b.N {
		// Each side's teardown leaves the machine some work (released loop
		// devices) that the create after it meets; taking turns at going
		// first shares that out.
		if i%2 == 0 {
			quiet()
			rawOnce(i)
			quiet()
			wrennOnce()
		} else {
			quiet()
			wrennOnce()
			quiet()
			rawOnce(i)
		}
	}
	b.StopTimer()
	rawP50, wrennP50 := p50(raw), p50(wrenn)
	reportPair(b, "raw", raw)
	reportPair(b, "raw-disk", rawDisk)
	reportPair(b, "raw-runc-run", rawRuncRun)
	reportPair(b, "raw-runc-health", rawRunc)
	reportPair(b, "wrenn", wrenn)
	reportPair(b, "wrenn-running", wrennRunning)
	reportPair(b, "wrenn-exec", wrennExec)
	reportPair(b, "wrenn-second-exec", wrennExec2)
	if rawP50 > 0 {
		b.ReportMetric(float64(wrennP50)/float64(rawP50), "wrenn/raw")
	}
	reportBootSteps(b, s.agent.log)
}

// reportBootSteps reports the p50 of each step the agent logs for a create
// ("sandbox running" with rootfs_ms, network_ms, runtime_ms and envd_ms), so
// a run shows where Wrenn's share of the time went.
func reportBootSteps(b *testing.B, agentLog string) {
	text, err := os.ReadFile(agentLog)
	if err != nil {
		b.Errorf("read agent log: %v", err)
		return
	}
	steps := map[string][]time.Duration{}
	for _, line := range strings.Split(string(text), "\n") {
		if !strings.Contains(line, `msg="sandbox running"`) {
			continue
		}
		for _, field := range strings.Fields(line) {
			k, v, ok := strings.Cut(field, "=")
			if !ok || !strings.HasSuffix(k, "_ms") {
				continue
			}
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				continue
			}
			steps[k] = append(steps[k], time.Duration(f*float64(time.Millisecond)))
		}
	}
	for _, k := range []string{"rootfs_ms", "network_ms", "runtime_ms", "envd_ms", "duration_ms"} {
		if l := steps[k]; len(l) > 0 {
			b.ReportMetric(float64(p50(l).Microseconds())/1000, "agent-"+strings.TrimSuffix(k, "_ms")+"-p50-ms")
		}
	}
}

// readyDisks counts the formatted disks in the agent's disk pool at dir,
// leaving out one being formatted (".tmp").
func readyDisks(b *testing.B, dir string) int {
	entries, err := os.ReadDir(dir)
	if err != nil {
		b.Fatalf("read the agent's disk pool: %v", err)
	}
	n := 0
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".tmp") {
			n++
		}
	}
	return n
}

// waitDisks waits, for up to 5 s, until the agent's disk pool holds n
// formatted disks again: its refill after a create runs mkfs, which
// neither side of the next iteration should meet.
func waitDisks(b *testing.B, dir string, n int) {
	for deadline := time.Now().Add(5 * time.Second); readyDisks(b, dir) < n && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
}

func p50(l []time.Duration) time.Duration {
	if len(l) == 0 {
		return 0
	}
	c := slices.Clone(l)
	slices.Sort(c)
	return c[(len(c)-1)/2]
}

// rawRunc holds what every raw iteration shares: the template mounted
// read-only, a network namespace, runc's default config and runc's state
// directory.
type rawRunc struct {
	dir, lower, netns, root string
	spec                    map[string]any
	client                  *http.Client
}

func newRawRunc(b *testing.B, img string) *rawRunc {
	dir := b.TempDir()
	r := &rawRunc{dir: dir, lower: filepath.Join(dir, "lower"), root: filepath.Join(dir, "runc"), netns: rawNetNS(b)}
	// The agent's namespaces reach envd over a veth; here loopback, up.
	if out, err := exec.Command("ip", "netns", "exec", filepath.Base(r.netns), "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		b.Fatalf("bring up loopback in %s: %v: %s", r.netns, err, out)
	}
	template := filepath.Join(dir, "template.ext4")
	if out, err := exec.Command("cp", "--sparse=always", img, template).CombinedOutput(); err != nil {
		b.Fatalf("copy template: %v: %s", err, out)
	}
	if err := os.Mkdir(r.lower, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := rawLoopMount(template, r.lower, true); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := unix.Unmount(r.lower, 0); err != nil {
			b.Errorf("unmount raw template: %v", err)
		}
	})

	specDir := filepath.Join(dir, "spec")
	if err := os.Mkdir(specDir, 0o755); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("runc", "spec")
	cmd.Dir = specDir
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("runc spec: %v: %s", err, out)
	}
	j, err := os.ReadFile(filepath.Join(specDir, "config.json"))
	if err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(j, &r.spec); err != nil {
		b.Fatalf("decode runc spec: %v", err)
	}

	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialInNetns(ctx, r.netns, network, addr)
		},
	}
	b.Cleanup(tr.CloseIdleConnections)
	r.client = &http.Client{Transport: tr, Timeout: 2 * time.Second}
	return r
}

// once runs one raw create and tears it down untimed. It returns the total,
// the disk and overlay part, the part until `runc run` returned and the
// runc-until-health part.
func (r *rawRunc) once(b *testing.B, i int) (total, disk, runcRun, run time.Duration) {
	id := fmt.Sprintf("wrenn-rawbench-%d-%d", os.Getpid(), i)
	sbDir := filepath.Join(r.dir, id)
	diskFile, diskDir, rootfs := filepath.Join(sbDir, "disk.ext4"), filepath.Join(sbDir, "disk"), filepath.Join(sbDir, "rootfs")
	var torn bool
	teardown := func() {
		if torn {
			return
		}
		torn = true
		if out, err := exec.Command("runc", "--root", r.root, "delete", "--force", id).CombinedOutput(); err != nil {
			b.Errorf("runc delete %s: %v: %s", id, err, out)
		}
		for _, m := range []string{rootfs, diskDir} {
			if err := unix.Unmount(m, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				b.Errorf("unmount %s: %v", m, err)
			}
		}
		if err := os.RemoveAll(sbDir); err != nil {
			b.Errorf("remove %s: %v", sbDir, err)
		}
	}
	defer teardown()

	start := time.Now()
	must := func(what string, err error) {
		if err != nil {
			b.StopTimer()
			teardown()
			b.Fatalf("raw %s: %v", what, err)
		}
	}
	must("mkdir", os.MkdirAll(sbDir, 0o700))
	f, err := os.OpenFile(diskFile, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	must("create disk", err)
	err = f.Truncate(1 << 30)
	must("size disk", errors.Join(err, f.Close()))
	if out, err := exec.Command("mkfs.ext4", "-q", "-b", "4096", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", diskFile).CombinedOutput(); err != nil {
		must("mkfs.ext4", fmt.Errorf("%w: %s", err, out))
	}
	must("mkdir disk", os.Mkdir(diskDir, 0o700))
	must("mount disk", rawLoopMount(diskFile, diskDir, false))
	upper, work := filepath.Join(diskDir, "upper"), filepath.Join(diskDir, "work")
	must("mkdir upper", os.Mkdir(upper, 0o755))
	must("mkdir work", os.Mkdir(work, 0o755))
	must("mkdir rootfs", os.Mkdir(rootfs, 0o755))
	must("mount overlay", unix.Mount("overlay", rootfs, "overlay", 0, fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", r.lower, upper, work)))
	disk = time.Since(start)

	runStart := time.Now()
	spec := r.config(rootfs, id)
	j, err := json.Marshal(spec)
	must("encode config", err)
	must("write config", os.WriteFile(filepath.Join(sbDir, "config.json"), j, 0o600))
	// The detached init inherits runc's stdio: a file, not a pipe that
	// would keep us waiting for its end.
	out, err := os.Create(filepath.Join(sbDir, "init.out"))
	must("create init output", err)
	cmd := exec.Command("runc", "--root", r.root, "--log", filepath.Join(sbDir, "runc.log"), "run", "--detach", "--bundle", sbDir, id)
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	runcRun = time.Since(runStart)
	out.Close()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(sbDir, "runc.log"))
		initOut, _ := os.ReadFile(filepath.Join(sbDir, "init.out"))
		must("runc run", fmt.Errorf("%w: %s %s", err, initOut, log))
	}
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(envdclient.Port)) + "/health"
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := r.client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				break
			}
		}
		if time.Now().After(deadline) {
			must("wait for envd", fmt.Errorf("no answer on /health within 30 s (last error %v)", err))
		}
		time.Sleep(time.Millisecond)
	}
	run = time.Since(runStart)
	total = time.Since(start)
	b.StopTimer()
	teardown()
	b.StartTimer()
	return total, disk, runcRun, run
}

// config is `runc spec`'s default with what the agent's spec also sets:
// the rootfs, wrenn-init as init, the capabilities envd needs, the test's
// network namespace, a cgroup and the default sandbox's limits.
func (r *rawRunc) config(rootfs, id string) map[string]any {
	var spec map[string]any
	j, _ := json.Marshal(r.spec)
	_ = json.Unmarshal(j, &spec)
	spec["root"] = map[string]any{"path": rootfs, "readonly": false}
	spec["hostname"] = id
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"/usr/local/bin/wrenn-init"}
	proc["env"] = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "WRENN_HOSTNAME=" + id}
	proc["noNewPrivileges"] = false
	caps := oci.Capabilities
	proc["capabilities"] = map[string]any{"bounding": caps, "effective": caps, "permitted": caps}
	linux := spec["linux"].(map[string]any)
	var ns []any
	for _, n := range linux["namespaces"].([]any) {
		m := n.(map[string]any)
		if m["type"] == "network" {
			m = map[string]any{"type": "network", "path": r.netns}
		}
		ns = append(ns, m)
	}
	linux["namespaces"] = ns
	linux["cgroupsPath"] = "/" + id
	res, _ := linux["resources"].(map[string]any)
	if res == nil {
		res = map[string]any{}
	}
	const mem = 512 << 20
	res["memory"] = map[string]any{"limit": mem, "swap": mem}
	res["cpu"] = map[string]any{"quota": 100000, "period": 100000}
	res["pids"] = map[string]any{"limit": 1024}
	linux["resources"] = res
	return spec
}

// rawNetNS makes a network namespace named outside the agent's "wrenn-"
// prefix, whose start-up orphan cleanup would otherwise delete it, and
// deletes it when b ends.
func rawNetNS(b *testing.B) string {
	if _, err := exec.LookPath("ip"); err != nil {
		b.Skip("ip not found: apt-get install iproute2")
	}
	name := "rawbench-" + id.Secret(4)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		b.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	b.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			b.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return filepath.Join("/var/run/netns", name)
}

// rawLoopMount attaches file to a free loop device (autoclear) and mounts
// its ext4 at target: what mount -o loop does, without spawning it.
func rawLoopMount(file, target string, readOnly bool) error {
	mode, flags, mflags := os.O_RDWR, uint32(unix.LO_FLAGS_AUTOCLEAR), uintptr(0)
	if readOnly {
		mode, flags, mflags = os.O_RDONLY, flags|unix.LO_FLAGS_READ_ONLY, unix.MS_RDONLY
	}
	backing, err := os.OpenFile(file, mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", file, err)
	}
	defer backing.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open loop control: %w", err)
	}
	defer ctl.Close()
	for range 16 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return fmt.Errorf("find free loop device: %w", err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		lf, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", dev, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Info: unix.LoopInfo64{Flags: flags}}
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if errors.Is(err, unix.EBUSY) {
			lf.Close()
			continue
		}
		if err != nil {
			lf.Close()
			return fmt.Errorf("configure %s for %s: %w", dev, file, err)
		}
		err = unix.Mount(dev, target, "ext4", mflags, "")
		lf.Close() // autoclear frees the device when the mount goes
		if err != nil {
			return fmt.Errorf("mount %s at %s: %w", dev, target, err)
		}
		return nil
	}
	return fmt.Errorf("attach %s: every free loop device was taken first", file)
}

// dialInNetns dials addr from inside the network namespace at nsPath: the
// socket belongs to the namespace it was made in, whichever thread uses it
// afterwards.
func dialInNetns(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			goruntime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("open own netns: %w", err)}
			return
		}
		defer orig.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			goruntime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("open netns %s: %w", nsPath, err)}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			goruntime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("enter netns %s: %w", nsPath, err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		ch <- result{c, err}
		// A thread that cannot go back stays locked and dies with this
		// goroutine rather than serving others in the wrong namespace.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			goruntime.UnlockOSThread()
		}
	}()
	r := <-ch
	return r.c, r.err
}
