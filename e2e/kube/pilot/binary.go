package pilot

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

// Environment variables the package reads (besides those of e2e/kube/cluster,
// whose AMBIT_CACHE, AMBIT_KUBE_NO_BUILD and AMBIT_KUBE_KEEP apply here too).
const (
	// EnvBinary points at a prebuilt pilot-discovery; nothing is built then.
	EnvBinary = "AMBIT_PILOT_BIN"
	// EnvNoBuild set to 1 makes a missing binary an ErrNoBinary instead of
	// running build.sh (~8 minutes the first time).
	EnvNoBuild = "AMBIT_KUBE_NO_BUILD"
	envCache   = "AMBIT_CACHE"
	envKeep    = "AMBIT_KUBE_KEEP"
)

// ErrNoBinary reports that pilot-discovery is missing and building it was not
// allowed.
var ErrNoBinary = errors.New("pilot-discovery not built")

// IstioModule is the module pilot-discovery is built from, at the version
// ambit's go.mod pins (so the workload API types on both sides are the same).
const IstioModule = "istio.io/istio"

// sourceDir is this package's directory in the source tree ("" when built
// with -trimpath).
func sourceDir() string {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		return filepath.Dir(file)
	}
	return ""
}

// BuildScript returns the path of e2e/kube/pilot/build.sh in this source tree.
func BuildScript() (string, error) {
	if d := sourceDir(); d != "" {
		p := filepath.Join(d, "build.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		p := filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "e2e", "kube", "pilot", "build.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("cannot find e2e/kube/pilot/build.sh: run from the ambit source tree")
}

// IstioVersion returns the version of istio.io/istio that ambit's go.mod
// selects, as `go list -m` reports it.
func IstioVersion(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Version}}", IstioModule)
	cmd.Dir = sourceDir()
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("go list -m %s: %w: %s", IstioModule, err, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("go list -m %s: %w", IstioModule, err)
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		return "", fmt.Errorf("go list -m %s: no version", IstioModule)
	}
	return v, nil
}

func cacheRoot() (string, error) {
	if c := os.Getenv(envCache); c != "" {
		return c, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("finding the cache root (set %s): %w", envCache, err)
	}
	return filepath.Join(home, ".cache", "ambit"), nil
}

// BinaryPath is where build.sh puts pilot-discovery of version.
func BinaryPath(version string) (string, error) {
	root, err := cacheRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "pilot-discovery-"+version, "pilot-discovery"), nil
}

func executable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// EnsureBinary returns the path of pilot-discovery at the pinned
// istio.io/istio version, running build.sh when it is missing (unless
// AMBIT_KUBE_NO_BUILD=1 or AMBIT_PILOT_BIN is set). Progress goes to
// progress. The first build takes ~8 minutes on two cores; later calls
// return at once. Concurrent builds are serialized by build.sh's lock.
func EnsureBinary(ctx context.Context, progress io.Writer) (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if !executable(p) {
			return "", fmt.Errorf("%w: %s=%s is not an executable file", ErrNoBinary, EnvBinary, p)
		}
		return p, nil
	}
	version, err := IstioVersion(ctx)
	if err != nil {
		return "", err
	}
	bin, err := BinaryPath(version)
	if err != nil {
		return "", err
	}
	if executable(bin) {
		return bin, nil
	}
	if os.Getenv(EnvNoBuild) == "1" {
		return "", fmt.Errorf("%w: %s is missing (run e2e/kube/pilot/build.sh, or unset %s)", ErrNoBinary, bin, EnvNoBuild)
	}
	script, err := BuildScript()
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoBinary, err)
	}
	if progress == nil {
		progress = io.Discard
	}
	fmt.Fprintf(progress, "e2e/kube/pilot: %s is missing; building pilot-discovery (first time only, ~8 min) with %s\n", bin, script)
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), "ISTIO_VERSION="+version)
	cmd.Stdout = io.Discard // the script prints the binary's path; progress is on stderr
	cmd.Stderr = progress
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building pilot-discovery %s with %s: %w (its output is above)", version, script, err)
	}
	if !executable(bin) {
		return "", fmt.Errorf("%w: %s still missing after %s", ErrNoBinary, bin, script)
	}
	return bin, nil
}
