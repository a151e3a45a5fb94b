package images

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/pkg/version"
)

// ctrNamespace is the containerd namespace the import check uses, apart
// from the kubelet's k8s.io.
const ctrNamespace = "ambit-images-test"

// containerd imports the pause tarball under its tag. Runs when ctr is on
// PATH (or AMBIT_CTR names it) and containerd answers on
// AMBIT_CONTAINERD_ADDRESS (default /run/containerd/containerd.sock).
func TestContainerdImport(t *testing.T) {
	ctr := os.Getenv("AMBIT_CTR")
	if ctr == "" {
		var err error
		if ctr, err = exec.LookPath("ctr"); err != nil {
			t.Skip("ctr not found (set AMBIT_CTR or put containerd's ctr on PATH)")
		}
	}
	addr := os.Getenv("AMBIT_CONTAINERD_ADDRESS")
	if addr == "" {
		addr = "/run/containerd/containerd.sock"
	}
	if _, err := os.Stat(addr); err != nil {
		t.Skipf("no containerd socket at %s (set AMBIT_CONTAINERD_ADDRESS): %v", addr, err)
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ctr, append([]string{"--address", addr, "-n", ctrNamespace}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	img := sharedImage(t, Pause)
	tag := Tag("", Pause.Name, version.Dev)
	p := filepath.Join(t.TempDir(), "pause.tar")
	if err := WriteTarball(p, tag, img); err != nil {
		t.Fatal(err)
	}
	run("images", "import", p)
	defer run("images", "rm", tag)
	if refs := run("images", "ls", "-q"); !strings.Contains(refs, tag+"\n") {
		t.Errorf("after import, ctr images ls -q:\n%s\nwant %s", refs, tag)
	}
	// The image ID (config digest) survives the import; containerd writes
	// its own manifest, so the manifest digest does not.
	id := configName(t, img).String()
	if out := run("images", "inspect", tag); !strings.Contains(out, id) {
		t.Errorf("ctr images inspect %s does not show config %s:\n%s", tag, id, out)
	}
}
