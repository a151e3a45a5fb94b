package realnode

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/pkg/netns"
)

// Prefix names everything a node creates on the host: network namespaces
// and host links (Prefix+name), the cgroup /ambtn in every hierarchy, the
// directories DataRoot and RunRoot.
const Prefix = "ambtn-"

// Fixed places on the host. Only this package writes there; Cleanup empties
// them.
const (
	// DataRoot holds each node's containerd root, kubelet root, configs and
	// logs (DataRoot/<node>).
	DataRoot = "/var/lib/ambtn"
	// RunRoot holds each node's sockets and containerd state (short paths
	// for unix sockets): RunRoot/<node>.
	RunRoot = "/run/ambtn"
	// CgroupName is the cgroup, in every hierarchy, that holds the nodes:
	// /ambtn/<node>/runtime (containerd, its shims, kubelet) and the
	// kubelet's cgroupRoot /ambtn/<node> (pods under kubepods).
	CgroupName = "ambtn"
)

// kernelTunables are the sysctls kubelet sets at start (protectKernelDefaults
// false); Start records them and Stop/Cleanup restore them.
var kernelTunables = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// savedSysctls is where the values before the first node are kept, so that a
// crashed run's values are restored by the next Cleanup.
var savedSysctls = filepath.Join(RunRoot, "sysctls.json")

// NodeIP is the address of node index i on its link (eth0 in its netns);
// HostIP(i) is the host's end; both in 172.28.i.0/30.
func NodeIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{172, 28, byte(i), 2}) }

// HostIP is the host end of node index i's link.
func HostIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{172, 28, byte(i), 1}) }

// PodCIDR is the pod range of node index i: 10.247.i.0/24.
func PodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 247, byte(i), 0}), 24)
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// setupNetwork creates the node's netns and the veth link host<->node, with
// addresses, routes (the host reaches the pod CIDR through the node) and
// forwarding inside the netns.
func setupNetwork(ns, link string, i int) error {
	f, err := netns.Create(ns)
	if err != nil {
		return err
	}
	f.Close()
	hostIP, nodeIP, pods := HostIP(i), NodeIP(i), PodCIDR(i)
	steps := [][]string{
		{"ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "addr", "add", hostIP.String() + "/30", "dev", link},
		{"ip", "link", "set", link, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "addr", "add", nodeIP.String() + "/30", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		{"ip", "-n", ns, "route", "add", "default", "via", hostIP.String()},
		{"ip", "route", "add", pods.String(), "via", nodeIP.String(), "dev", link},
		{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return fmt.Errorf("node network: %w", err)
		}
	}
	return nil
}

// cgroupMounts returns the mount points of the cgroup (v1) and cgroup2
// hierarchies.
func cgroupMounts() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts ... - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, x := range fields {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 {
			continue
		}
		if t := fields[sep+1]; t == "cgroup" || t == "cgroup2" {
			out = append(out, fields[4])
		}
	}
	return out, sc.Err()
}

// setupCgroups creates /ambtn/<node>/runtime in every hierarchy, copying
// cpuset's cpus and mems down, and returns the runtime cgroup's directories.
func setupCgroups(node string) ([]string, error) {
	mounts, err := cgroupMounts()
	if err != nil {
		return nil, err
	}
	var runtimeDirs []string
	for _, m := range mounts {
		dir := m
		for _, part := range []string{CgroupName, node, "runtime"} {
			parent := dir
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return nil, fmt.Errorf("creating cgroup %s: %w", dir, err)
			}
			for _, file := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(parent, file))
				if err != nil {
					continue // not the cpuset hierarchy
				}
				cur, _ := os.ReadFile(filepath.Join(dir, file))
				if strings.TrimSpace(string(cur)) == "" {
					if err := os.WriteFile(filepath.Join(dir, file), b, 0o644); err != nil {
						return nil, fmt.Errorf("writing %s: %w", filepath.Join(dir, file), err)
					}
				}
			}
		}
		runtimeDirs = append(runtimeDirs, dir)
	}
	return runtimeDirs, nil
}

// joinCgroups moves pid into each directory's cgroup.procs.
func joinCgroups(dirs []string, pid int) error {
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("moving pid %d into %s: %w", pid, d, err)
		}
	}
	return nil
}

// cgroupPIDs lists the processes in the cgroup trees rel (relative to each
// hierarchy), deduplicated.
func cgroupPIDs(mounts []string, rel string) []int {
	seen := map[int]bool{}
	var out []int
	for _, m := range mounts {
		root := filepath.Join(m, rel)
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
					seen[pid] = true
					out = append(out, pid)
				}
			}
			return nil
		})
	}
	return out
}

// killCgroup SIGKILLs every process in the cgroup trees rel until none is
// left (shims and containers fork) or 15 seconds pass.
func killCgroup(rel string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids := cgroupPIDs(mounts, rel)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still in cgroup %s after SIGKILL", pids, rel)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removeCgroups removes the cgroup trees rel, deepest first.
func removeCgroups(rel string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		root := filepath.Join(m, rel)
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for range 50 { // a killed process leaves its cgroup a moment later
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// unmountUnder lazily unmounts every mount point under each of dirs,
// deepest first (containerd's rootfs and shm mounts, pod netns bind mounts,
// kubelet's volume tmpfs and its rshared bind of its root).
func unmountUnder(dirs ...string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		for _, d := range dirs {
			if mp == d || strings.HasPrefix(mp, d+"/") {
				points = append(points, mp)
			}
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func readSysctl(key string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", key))
	return strings.TrimSpace(string(b)), err
}

// saveSysctls records kernelTunables in savedSysctls unless a file is there
// already (an earlier node or a crashed run holds the original values).
func saveSysctls() error {
	if _, err := os.Stat(savedSysctls); err == nil {
		return nil
	}
	vals := map[string]string{}
	for _, k := range kernelTunables {
		v, err := readSysctl(k)
		if err != nil {
			return fmt.Errorf("reading sysctl %s: %w", k, err)
		}
		vals[k] = v
	}
	b, _ := json.Marshal(vals)
	if err := os.MkdirAll(RunRoot, 0o755); err != nil {
		return err
	}
	return os.WriteFile(savedSysctls, b, 0o644)
}

// restoreSysctls writes back the values in savedSysctls and removes it.
func restoreSysctls() error {
	b, err := os.ReadFile(savedSysctls)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var vals map[string]string
	if err := json.Unmarshal(b, &vals); err != nil {
		return fmt.Errorf("reading %s: %w", savedSysctls, err)
	}
	var errs []error
	for k, v := range vals {
		if cur, _ := readSysctl(k); cur == v {
			continue
		}
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restoring sysctl %s=%s: %w", k, v, err))
		}
	}
	if len(errs) == 0 {
		errs = append(errs, os.Remove(savedSysctls))
	}
	return errors.Join(errs...)
}

// hostLinks lists the host's links named Prefix*.
func hostLinks() ([]string, error) {
	ifs, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, i := range ifs {
		if strings.HasPrefix(i.Name(), Prefix) {
			out = append(out, i.Name())
		}
	}
	return out, nil
}

// teardown removes what node (or, when node is "", every node) left on the
// host: processes in its cgroups, mounts under its directories, its netns
// and host link, its cgroups, its directories (unless keepData), and, when
// no node is left, the kernel tunables.
func teardown(node string, keepData bool) error {
	var errs []error
	cg, data, runDir := CgroupName, DataRoot, RunRoot
	if node != "" {
		cg, data, runDir = filepath.Join(CgroupName, node), filepath.Join(DataRoot, node), filepath.Join(RunRoot, node)
	}
	errs = append(errs, killCgroup(cg))
	errs = append(errs, unmountUnder(data, runDir))
	nss, err := netns.List(Prefix)
	errs = append(errs, err)
	for _, ns := range nss {
		if node == "" || ns == Prefix+node {
			errs = append(errs, netns.Delete(ns))
		}
	}
	// Deleting a netns deletes its veth pair; a link left without one (a
	// crash between creating the two) goes here.
	links, err := hostLinks()
	errs = append(errs, err)
	for _, l := range links {
		if node == "" || l == Prefix+node {
			if err := run("ip", "link", "del", l); err != nil && linkExists(l) {
				errs = append(errs, err)
			}
		}
	}
	errs = append(errs, removeCgroups(cg))
	// libcni caches each ADD's result here until the DEL.
	if left, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", NetworkName+"-*")); len(left) > 0 && node == "" {
		for _, f := range left {
			errs = append(errs, os.Remove(f))
		}
	}
	if node != "" {
		errs = append(errs, os.RemoveAll(runDir))
	}
	if node == "" || noNodesLeft() {
		errs = append(errs, restoreSysctls())
	}
	if node == "" {
		errs = append(errs, os.RemoveAll(runDir))
	}
	if !keepData {
		errs = append(errs, os.RemoveAll(data))
	}
	if node == "" || noNodesLeft() { // the parents, once no node is left in them
		_ = syscall.Rmdir(RunRoot)
		_ = syscall.Rmdir(DataRoot)
		removeStaleShimSockets()
		if mounts, err := cgroupMounts(); err == nil {
			for _, m := range mounts {
				_ = syscall.Rmdir(filepath.Join(m, CgroupName))
			}
		}
	}
	return errors.Join(errs...)
}

// shimSocketDir is where containerd's shims put their sockets whatever
// containerd's state dir is (as root). A shim removes its socket when it
// exits, not when it is killed.
const shimSocketDir = "/run/containerd/s"

// removeStaleShimSockets removes the sockets in shimSocketDir no process
// listens on (none of a node's shims runs any more when this is called;
// a socket bound in another network namespace would not be listed in this
// one's /proc/net/unix, and only this package's containerd runs on the
// test machines), then the directory and its parent if empty.
func removeStaleShimSockets() {
	live := map[string]bool{}
	if b, err := os.ReadFile("/proc/net/unix"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 8 {
				live[f[7]] = true
			}
		}
	}
	es, _ := os.ReadDir(shimSocketDir)
	for _, e := range es {
		p := filepath.Join(shimSocketDir, e.Name())
		if e.Type()&os.ModeSocket != 0 && !live[p] {
			_ = os.Remove(p)
		}
	}
	_ = syscall.Rmdir(shimSocketDir)
	_ = syscall.Rmdir(filepath.Dir(shimSocketDir))
}

func linkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

func noNodesLeft() bool {
	es, err := os.ReadDir(RunRoot)
	if err != nil {
		return true
	}
	for _, e := range es {
		if e.IsDir() {
			return false
		}
	}
	return true
}

// Cleanup removes every node's leftovers from the host (a crashed run's
// processes, mounts, network namespaces, links, cgroups and directories)
// and restores the kernel tunables kubelet changed. Start calls it first;
// it needs root.
func Cleanup() error { return teardown("", false) }
