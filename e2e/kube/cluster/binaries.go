package cluster

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
)

// DefaultVersion is the Kubernetes release the binaries are built from. The
// client-go in go.mod is its v0.minor.patch twin.
const DefaultVersion = "v1.37.2"

// Environment variables the package reads.
const (
	// EnvCache overrides the cache root ($HOME/.cache/ambit), as in hack/.
	EnvCache = "AMBIT_CACHE"
	// EnvBinDir points at a directory that already holds kube-apiserver,
	// kube-controller-manager and kubectl; nothing is built then.
	EnvBinDir = "AMBIT_KUBE_BIN"
	// EnvNoBuild set to 1 makes missing binaries an ErrNoBinaries instead of
	// running build.sh (which takes ~10 minutes the first time).
	EnvNoBuild = "AMBIT_KUBE_NO_BUILD"
	// EnvKeep set to 1 keeps each cluster's directory (logs, PKI, etcd data)
	// after Stop, for debugging.
	EnvKeep = "AMBIT_KUBE_KEEP"
)

// ErrNoBinaries reports that the control-plane binaries are missing and
// building them was not allowed.
var ErrNoBinaries = errors.New("kubernetes binaries not built")

// Binaries are the absolute paths of the programs a cluster runs. Scheduler
// is built by the same script and required only by Options.Scheduler.
type Binaries struct {
	Etcd, APIServer, ControllerManager, Kubectl, Scheduler string
}

func cacheRoot() (string, error) {
	if c := os.Getenv(EnvCache); c != "" {
		return c, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("finding the cache root (set %s): %w", EnvCache, err)
	}
	return filepath.Join(home, ".cache", "ambit"), nil
}

// BinDir is where build.sh puts the binaries of version.
func BinDir(version string) (string, error) {
	if d := os.Getenv(EnvBinDir); d != "" {
		return d, nil
	}
	root, err := cacheRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "kube-"+version, "bin"), nil
}

// missing names the required binaries that are not executable; withScheduler
// adds kube-scheduler to the required set.
func (b Binaries) missing(withScheduler bool) []string {
	var out []string
	need := []string{b.APIServer, b.ControllerManager, b.Kubectl}
	if withScheduler {
		need = append(need, b.Scheduler)
	}
	for _, p := range need {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			out = append(out, filepath.Base(p))
		}
	}
	if b.Etcd == "" {
		out = append(out, "etcd")
	}
	return out
}

func findBinaries(version string) (Binaries, error) {
	dir, err := BinDir(version)
	if err != nil {
		return Binaries{}, err
	}
	b := Binaries{
		APIServer:         filepath.Join(dir, "kube-apiserver"),
		ControllerManager: filepath.Join(dir, "kube-controller-manager"),
		Kubectl:           filepath.Join(dir, "kubectl"),
		Scheduler:         filepath.Join(dir, "kube-scheduler"),
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		b.Etcd = p
	}
	return b, nil
}

// BuildScript returns the path of e2e/kube/build.sh in this source tree.
func BuildScript() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		p := filepath.Join(filepath.Dir(file), "..", "build.sh")
		if _, err := os.Stat(p); err == nil {
			return filepath.Clean(p), nil
		}
	}
	// -trimpath builds: ask go for the module root.
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		gomod := strings.TrimSpace(string(out))
		p := filepath.Join(filepath.Dir(gomod), "e2e", "kube", "build.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("cannot find e2e/kube/build.sh: run from the ambit source tree")
}

// EnsureBinaries returns the binaries of version, running build.sh when some
// are missing (unless AMBIT_KUBE_NO_BUILD=1 or AMBIT_KUBE_BIN is set). The
// build's progress goes to progress. The first build takes ~10 minutes on
// two cores; later calls return at once. Concurrent callers are serialized
// by build.sh's lock file.
func EnsureBinaries(ctx context.Context, version string, progress io.Writer) (Binaries, error) {
	return ensureBinaries(ctx, version, progress, false)
}

// ensureBinaries is EnsureBinaries, also requiring kube-scheduler when
// withScheduler is set.
func ensureBinaries(ctx context.Context, version string, progress io.Writer, withScheduler bool) (Binaries, error) {
	if version == "" {
		version = DefaultVersion
	}
	b, err := findBinaries(version)
	if err != nil {
		return b, err
	}
	missing := b.missing(withScheduler)
	if len(missing) == 0 {
		return b, nil
	}
	if os.Getenv(EnvNoBuild) == "1" || os.Getenv(EnvBinDir) != "" {
		return b, fmt.Errorf("%w: missing %s (run e2e/kube/build.sh, or unset %s/%s)",
			ErrNoBinaries, strings.Join(missing, ", "), EnvNoBuild, EnvBinDir)
	}
	script, err := BuildScript()
	if err != nil {
		return b, fmt.Errorf("%w: missing %s: %v", ErrNoBinaries, strings.Join(missing, ", "), err)
	}
	if progress == nil {
		progress = io.Discard
	}
	fmt.Fprintf(progress, "e2e/kube: missing %s; running %s (first time only, ~10 min)\n",
		strings.Join(missing, ", "), script)
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), "KUBE_VERSION="+version)
	cmd.Stdout = io.Discard // the script prints the bin dir; progress is on stderr
	cmd.Stderr = progress
	if err := cmd.Run(); err != nil {
		return b, fmt.Errorf("building kubernetes %s with %s: %w (its output is above)", version, script, err)
	}
	if b, err = findBinaries(version); err != nil {
		return b, err
	}
	if missing := b.missing(withScheduler); len(missing) > 0 {
		return b, fmt.Errorf("%w: %s still missing after %s", ErrNoBinaries, strings.Join(missing, ", "), script)
	}
	return b, nil
}
