package testnode

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// CgroupParent is the test nodes' cgroup, below the root of the hierarchy
// PodCgroup uses; pods' cgroups are CgroupParent/kubepods/pod<uid>, as
// kubelet's cgroupfs driver names them.
const CgroupParent = "ambitk-testnode"

// cgroupRoots are the hierarchies tried, in order: cgroup v2 (the hybrid
// layout's unified mount, or the whole tree), then v1's pids controller.
var cgroupRoots = []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/pids"}

// cgroupRoot returns the first hierarchy root in which CgroupParent can be
// created.
func cgroupRoot() (string, error) {
	var errs []error
	for _, root := range cgroupRoots {
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
			errs = append(errs, err)
			continue
		}
		if root == "/sys/fs/cgroup" {
			// Only as the v2 tree: v1 has controllers' directories here.
			if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
				continue
			}
		}
		if err := os.MkdirAll(filepath.Join(root, CgroupParent), 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		return root, nil
	}
	return "", fmt.Errorf("no writable cgroup hierarchy among %v for the pods' cgroups: %w", cgroupRoots, errors.Join(errs...))
}

// PodCgroup is the directory of the pod's cgroup under root.
func PodCgroup(root string, uid types.UID) string {
	return filepath.Join(root, CgroupParent, "kubepods", "pod"+string(uid))
}

// removeCgroup kills the processes left in dir and below, then removes the
// directories, deepest first, waiting up to a few seconds for them to
// empty.
func removeCgroup(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil || len(dirs) == 0 {
		return nil
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	deadline := time.Now().Add(5 * time.Second)
	var errs []error
	for _, d := range dirs {
		for {
			killAll(d)
			err := os.Remove(d)
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
				break
			}
			time.Sleep(20 * time.Millisecond) // polling: a killed process leaves its cgroup when reaped
		}
	}
	return errors.Join(errs...)
}

// killAll SIGKILLs the processes in the cgroup dir.
func killAll(dir string) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// cleanupCgroups removes CgroupParent from every hierarchy tried.
func cleanupCgroups() error {
	var errs []error
	for _, root := range cgroupRoots {
		errs = append(errs, removeCgroup(filepath.Join(root, CgroupParent)))
	}
	return errors.Join(errs...)
}
