package realnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
)

// Versions of the node's programs; build.sh builds the same by default.
const (
	ContainerdVersion = "v2.4.2"
	CrictlVersion     = "v1.37.0"
)

// Binaries are the absolute paths of the programs a node runs.
type Binaries struct {
	Kubelet, KubeProxy, Containerd, Ctr, Shim, Crictl, Runc string
}

func cacheRoot() (string, error) {
	if c := os.Getenv(cluster.EnvCache); c != "" {
		return c, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("finding the cache root (set %s): %w", cluster.EnvCache, err)
	}
	return filepath.Join(home, ".cache", "ambit"), nil
}

func findBinaries() (Binaries, error) {
	root, err := cacheRoot()
	if err != nil {
		return Binaries{}, err
	}
	kube, err := cluster.BinDir(cluster.DefaultVersion)
	if err != nil {
		return Binaries{}, err
	}
	cd := filepath.Join(root, "containerd-"+ContainerdVersion, "bin")
	b := Binaries{
		Kubelet:    filepath.Join(kube, "kubelet"),
		KubeProxy:  filepath.Join(kube, "kube-proxy"),
		Containerd: filepath.Join(cd, "containerd"),
		Ctr:        filepath.Join(cd, "ctr"),
		Shim:       filepath.Join(cd, "containerd-shim-runc-v2"),
		Crictl:     filepath.Join(root, "crictl-"+CrictlVersion, "bin", "crictl"),
	}
	if p, err := exec.LookPath("runc"); err == nil {
		b.Runc = p
	}
	return b, nil
}

func (b Binaries) missing() []string {
	var out []string
	for _, p := range []string{b.Kubelet, b.KubeProxy, b.Containerd, b.Ctr, b.Shim, b.Crictl} {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			out = append(out, filepath.Base(p))
		}
	}
	if b.Runc == "" {
		out = append(out, "runc")
	}
	return out
}

// BuildScript returns the path of e2e/kube/realnode/build.sh in this tree.
func BuildScript() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		p := filepath.Join(filepath.Dir(file), "build.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		p := filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "e2e", "kube", "realnode", "build.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("cannot find e2e/kube/realnode/build.sh: run from the ambit source tree")
}

// EnsureBinaries returns the node's binaries, running build.sh when some are
// missing (unless AMBIT_KUBE_NO_BUILD=1): kubelet through ../build.sh,
// containerd and crictl from source, runc from Debian (needs root). Build
// progress goes to progress. Cold, it takes ~5 minutes on two cores with a
// warm Kubernetes build; later calls return at once. A failure wraps
// cluster.ErrNoBinaries.
func EnsureBinaries(ctx context.Context, progress io.Writer) (Binaries, error) {
	b, err := findBinaries()
	if err != nil {
		return b, err
	}
	missing := b.missing()
	if len(missing) == 0 {
		return b, nil
	}
	if os.Getenv(cluster.EnvNoBuild) == "1" {
		return b, fmt.Errorf("%w: missing %s (run e2e/kube/realnode/build.sh, or unset %s)",
			cluster.ErrNoBinaries, strings.Join(missing, ", "), cluster.EnvNoBuild)
	}
	script, err := BuildScript()
	if err != nil {
		return b, fmt.Errorf("%w: missing %s: %v", cluster.ErrNoBinaries, strings.Join(missing, ", "), err)
	}
	if progress == nil {
		progress = io.Discard
	}
	fmt.Fprintf(progress, "realnode: missing %s; running %s (first time only, minutes)\n", strings.Join(missing, ", "), script)
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), "CONTAINERD_VERSION="+ContainerdVersion, "CRICTL_VERSION="+CrictlVersion,
		"KUBE_VERSION="+cluster.DefaultVersion)
	cmd.Stdout = io.Discard
	cmd.Stderr = progress
	if err := cmd.Run(); err != nil {
		return b, fmt.Errorf("%w: %s failed: %v (its output is above)", cluster.ErrNoBinaries, script, err)
	}
	if b, err = findBinaries(); err != nil {
		return b, err
	}
	if missing := b.missing(); len(missing) > 0 {
		return b, fmt.Errorf("%w: %s still missing after %s", cluster.ErrNoBinaries, strings.Join(missing, ", "), script)
	}
	return b, nil
}
