package local

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

// binaries the tests build, by name and package.
var binaries = []struct{ name, pkg string }{
	{"ambitctl", "./ctl/cmd/ambitctl"},
	{"istiod", "./istiod/cmd/istiod"},
	{"cni-agent", "./cni/cmd/cni-agent"},
	{"ambit-cni", "./cni/cmd/ambit-cni"},
	{"ztunnel", "./ztunnel/cmd/ztunnel"},
	{"ambit-echo", "./e2e/echo/cmd/ambit-echo"},
}

var (
	binDir    string
	missing   []string // binaries whose package does not exist
	buildErr  error
	repoRoot  string
	demoFile  string
	stateBase string
)

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "ambit-e2e-local-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir, stateBase = filepath.Join(dir, "bin"), dir
		repoRoot, _ = filepath.Abs("../..")
		demoFile = filepath.Join(repoRoot, "deploy/examples/local/demo.yaml")
		if os.Geteuid() == 0 {
			buildErr = build()
		}
		return m.Run()
	}()
	os.Exit(code)
}

func build() error {
	args := []string{"build", "-o", binDir + "/"}
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(repoRoot, b.pkg)); err != nil {
			missing = append(missing, b.name)
			continue
		}
		args = append(args, b.pkg)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// requireBinaries skips (fails under CI=true) without root or a binary.
func requireBinaries(t *testing.T) {
	t.Helper()
	netnstest.RequireRoot(t)
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	if len(missing) > 0 {
		netnstest.SkipOrFail(t, "binaries not in the tree yet: %s (their packages do not exist)", strings.Join(missing, ", "))
	}
}

// mesh drives ambitctl local with one state dir.
type mesh struct {
	t     *testing.T
	state string
}

func newMesh(t *testing.T) *mesh {
	m := &mesh{t: t, state: filepath.Join(stateBase, "state-"+strings.ReplaceAll(t.Name(), "/", "-"))}
	t.Cleanup(func() {
		if out, err := m.run("down"); err != nil {
			t.Errorf("cleanup: ambitctl local down: %v\n%s", err, out)
		}
	})
	return m
}

// run runs `ambitctl local SUB --state-dir S ARGS...`; it returns combined
// output.
func (m *mesh) run(sub string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	all := append([]string{"local", sub, "--state-dir", m.state}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ambitctl"), all...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (m *mesh) must(sub string, args ...string) string {
	m.t.Helper()
	out, err := m.run(sub, args...)
	if err != nil {
		m.t.Fatalf("ambitctl local %s %v: %v\n%s", sub, args, err, out)
	}
	return out
}

type podStatus struct {
	Namespace, Name, Node, IP, Identity, UID, Netns string
	Enrolled, Captured, Running                     bool
}

type status struct {
	Pods      []podStatus
	Processes []struct {
		Name                  string
		PID                   int
		Alive, Ready, Stopped bool
	}
	Notes []string
}

// in returns m reporting to t: the mesh helpers fail the (sub)test that
// calls them.
func (m *mesh) in(t *testing.T) *mesh {
	c := *m
	c.t = t
	return &c
}

// status is `local status -o json`; an unhealthy mesh (exit code 3, e.g.
// a process stopped on purpose) still gives its status.
func (m *mesh) status() status {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ambitctl"), "local", "status", "--state-dir", m.state, "-o", "json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 3 {
		err = nil
	}
	if err != nil {
		m.t.Fatalf("ambitctl local status: %v\n%s%s", err, out, stderr.Bytes())
	}
	var s status
	if err := json.Unmarshal(out, &s); err != nil {
		m.t.Fatalf("status JSON: %v\n%s", err, out)
	}
	return s
}

func (s status) pod(key string) (podStatus, bool) {
	for _, p := range s.Pods {
		if p.Namespace+"/"+p.Name == key {
			return p, true
		}
	}
	return podStatus{}, false
}

// eventually retries fn until it succeeds or the deadline passes.
func eventually(t *testing.T, what string, d time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, d, err)
		}
		time.Sleep(200 * time.Millisecond) // retry interval, bounded by the deadline
	}
}

func ambitlNetns(t *testing.T) []string {
	t.Helper()
	names, err := netns.List("ambitl-")
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestDemoLifecycle(t *testing.T) {
	requireBinaries(t)
	requireTools(t, "ip", "nft")
	m := newMesh(t)
	vethsBefore := rootVeths(t)
	out := m.must("up", "-f", demoFile)
	for _, want := range []string{"creating node node-a", "pod demo/client 10.244.", "enrolled, captured", "local mesh ready"} {
		if !strings.Contains(out, want) {
			t.Errorf("up output lacks %q:\n%s", want, out)
		}
	}

	st := m.status()
	if len(st.Pods) != 4 {
		t.Fatalf("status shows %d pods, want 4: %+v", len(st.Pods), st.Pods)
	}
	for _, p := range st.Pods {
		if p.IP == "" || !p.Running {
			t.Errorf("pod %s/%s: ip %q running %v", p.Namespace, p.Name, p.IP, p.Running)
		}
		if p.Enrolled != (p.Namespace == "demo") || p.Captured != p.Enrolled {
			t.Errorf("pod %s/%s: enrolled %v captured %v", p.Namespace, p.Name, p.Enrolled, p.Captured)
		}
	}
	for _, pr := range st.Processes {
		if !pr.Alive || !pr.Ready {
			t.Errorf("process %s: alive %v ready %v", pr.Name, pr.Alive, pr.Ready)
		}
	}
	if len(st.Notes) == 0 || !strings.Contains(st.Notes[0], "kube-proxy") {
		t.Errorf("status notes %v do not say that VIPs need the mesh", st.Notes)
	}

	serverB, _ := st.pod("demo/server-b")
	t.Run("exec through the mesh", func(t *testing.T) {
		for _, addr := range []string{serverB.IP + ":8080", "10.96.0.10:80"} {
			eventually(t, "client -> "+addr, 20*time.Second, func() error {
				out, err := m.run("exec", "demo/client", "--", "ambit-echo", "client", "-proto", "http", "-addr", addr, "-n", "3")
				if err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				if !strings.Contains(out, "3 ok") || !strings.Contains(out, "server-b") {
					return fmt.Errorf("unexpected output: %s", out)
				}
				return nil
			})
		}
	})
	t.Run("exec exit code", func(t *testing.T) {
		_, err := m.run("exec", "demo/client", "--", "sh", "-c", "exit 7")
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
			t.Fatalf("exit = %v, want code 7", err)
		}
	})

	t.Run("apply and delete", func(t *testing.T) {
		frag := filepath.Join(t.TempDir(), "frag.yaml")
		if err := os.WriteFile(frag, []byte(`
namespaces:
  - name: legacy
    labels: {istio.io/dataplane-mode: ambient}
pods:
  - name: extra
    namespace: demo
    node: node-b
    serviceAccount: server
    labels: {app: extra}
    run: ["ambit-echo", "server", "-name", "{{name}}"]
`), 0o644); err != nil {
			t.Fatal(err)
		}
		out := m.must("apply", "-f", frag)
		if !strings.Contains(out, "pod demo/extra 10.244.1.") {
			t.Errorf("apply output: %s", out)
		}
		st := m.status()
		if p, ok := st.pod("demo/extra"); !ok || p.IP == "" || !p.Captured {
			t.Errorf("extra after apply: %+v", p)
		}
		eventually(t, "legacy captured after labelling its namespace", 20*time.Second, func() error {
			if p, _ := m.status().pod("legacy/legacy"); !p.Enrolled || !p.Captured {
				return fmt.Errorf("legacy: %+v", p)
			}
			return nil
		})

		bad := filepath.Join(t.TempDir(), "bad.yaml")
		os.WriteFile(bad, []byte("pods: [{name: x, namespace: nope, node: node-z}]\n"), 0o644)
		if out, err := m.run("apply", "-f", bad); err == nil || !strings.Contains(out, "nothing applied") {
			t.Errorf("invalid fragment: err %v, output %s", err, out)
		}

		del := filepath.Join(t.TempDir(), "del.yaml")
		os.WriteFile(del, []byte("pods: [{name: extra, namespace: demo}]\n"), 0o644)
		m.must("delete", "-f", del)
		if _, ok := m.status().pod("demo/extra"); ok {
			t.Error("extra still listed after delete")
		}
		for _, n := range ambitlNetns(t) {
			if strings.Contains(n, "extra") {
				t.Errorf("netns %s left after delete", n)
			}
		}
	})

	// down removes everything, and again is fine.
	procs := m.status().Processes
	m.must("down")
	if left := ambitlNetns(t); len(left) > 0 {
		t.Errorf("network namespaces left after down: %v", left)
	}
	for _, p := range procs {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.PID)); err == nil {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID)); !bytes.Contains(b, []byte(") Z")) {
				t.Errorf("process %s (pid %d) still runs after down", p.Name, p.PID)
			}
		}
	}
	if _, err := os.Stat(m.state); !os.IsNotExist(err) {
		t.Errorf("state dir %s still exists after down (%v)", m.state, err)
	}
	assertNothingLeft(t, m, vethsBefore)
	if out, err := m.run("down"); err != nil {
		t.Errorf("second down: %v\n%s", err, out)
	}
	assertNothingLeft(t, m, vethsBefore)
}

// rootVeths lists the veth links of the root network namespace.
func rootVeths(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show", "type", "veth").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link: %v: %s", err, out)
	}
	names := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			names[name] = true
		}
	}
	return names
}

// assertNothingLeft checks that local mode left nothing of its own: no
// ambitl- namespace, no link of its own in the root namespace (ambitl-*,
// or a veth that was not there before up), no process whose command line
// names the state dir, no state dir or lock file, no ambit nftables table
// in the root namespace.
func assertNothingLeft(t *testing.T, m *mesh, vethsBefore map[string]bool) {
	t.Helper()
	if left := ambitlNetns(t); len(left) > 0 {
		t.Errorf("network namespaces left after down: %v", left)
	}
	links, err := exec.Command("ip", "-o", "link").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link: %v: %s", err, links)
	}
	for _, line := range strings.Split(string(links), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], "ambitl") {
			t.Errorf("link left in the root namespace: %s", line)
		}
	}
	for name := range rootVeths(t) {
		if !vethsBefore[name] {
			t.Errorf("veth %s appeared in the root namespace during the test", name)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(m.state)) && !strings.HasPrefix(p, fmt.Sprintf("/proc/%d/", os.Getpid())) {
			t.Errorf("process left after down: %s: %s", p, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	for _, p := range []string{m.state, m.state + ".lock"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after down (%v)", p, err)
		}
	}
	tables, err := exec.Command("nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables: %v: %s", err, tables)
	}
	if strings.Contains(string(tables), "ambit") {
		t.Errorf("nftables table of local mode in the root namespace: %s", tables)
	}
}

func TestDownAfterCrash(t *testing.T) {
	requireBinaries(t)
	requireTools(t, "ip", "nft")
	m := newMesh(t)
	vethsBefore := rootVeths(t)
	topo := filepath.Join(t.TempDir(), "one.yaml")
	os.WriteFile(topo, []byte(`
nodes: [{name: solo}]
namespaces: [{name: demo, labels: {istio.io/dataplane-mode: ambient}}]
pods:
  - {name: srv, namespace: demo, node: solo, run: ["ambit-echo", "server"]}
`), 0o644)
	m.must("up", "-f", topo)
	// A crash of ambitctl's bookkeeping: procs.json is gone.
	if err := os.Remove(filepath.Join(m.state, "procs.json")); err != nil {
		t.Fatal(err)
	}
	m.must("down")
	if left := ambitlNetns(t); len(left) > 0 {
		t.Errorf("network namespaces left after down: %v", left)
	}
	// No process is left in a deleted namespace: ambit-echo and the node
	// processes would keep it (and their pids) alive.
	out, _ := exec.Command("pgrep", "-f", binDir).Output()
	if len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("processes of the test binaries still run: %s", out)
	}
	assertNothingLeft(t, m, vethsBefore)
}

func TestUpRejectsInvalidTopology(t *testing.T) {
	requireBinaries(t)
	m := newMesh(t)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte(`
nodes: [{name: a}]
namespaces: [{name: demo}]
policies:
  - {apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: l7, namespace: demo}, spec: {rules: [{to: [{operation: {paths: ["/x"]}}]}]}}
`), 0o644)
	out, err := m.run("up", "-f", bad)
	// istiod's builder names the policy and the HTTP attribute ztunnel cannot enforce.
	if err == nil || !strings.Contains(out, "AuthorizationPolicy demo/l7") || !strings.Contains(out, "HTTP attributes not enforced by ztunnel (found: paths)") {
		t.Fatalf("up with an L7 policy: err %v, output:\n%s", err, out)
	}
	if left := ambitlNetns(t); len(left) > 0 {
		t.Errorf("namespaces created for an invalid topology: %v", left)
	}
}
