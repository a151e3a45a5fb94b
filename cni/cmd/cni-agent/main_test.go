package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/cni/capture"
	"github.com/ambit-mesh/ambit/pkg/enrollment"
	"github.com/ambit-mesh/ambit/pkg/localcluster"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
	"github.com/ambit-mesh/ambit/pkg/zds"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

const (
	prefix   = "ambit-t-cniagent-"
	testWait = 20 * time.Second
)

// binDir holds cni-agent and ambit-cni built by TestMain (root only).
var binDir string

// TestMain builds both binaries into one temp dir (so cni-agent's default
// --plugin-binary finds ambit-cni next to it), runs the tests and removes
// the dir and any leftover namespaces named prefix*, as netnstest.Main does.
func TestMain(m *testing.M) {
	if path := os.Getenv(envZDSHello); path != "" {
		os.Exit(zdsHelloOnly(path))
	}
	os.Exit(runMain(m))
}

// envZDSHello makes the test binary a would-be ztunnel: it connects to the
// ZDS socket named by the variable, sends a valid hello and exits 0 when
// the agent closes the connection without sending anything (refused), 1
// when the agent sends a request (accepted).
const envZDSHello = "AMBT_ZDS_HELLO"

func zdsHelloOnly(path string) int {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer c.Close()
	hello, err := proto.Marshal(&zdsapi.ZdsHello{Version: zdsapi.Version_V1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	_, _ = c.Write(hello) // fails if the agent already closed: also a refusal
	_ = c.SetReadDeadline(time.Now().Add(testWait))
	n, err := c.Read(make([]byte, 4096))
	// Refused: the agent closed the connection (EOF), or closed it with our
	// unread hello still queued, which the kernel reports as a reset.
	if n == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		return 0
	}
	fmt.Fprintf(os.Stderr, "the agent answered a foreign hello: %d bytes, %v\n", n, err)
	return 1
}

func runMain(m *testing.M) int {
	if os.Geteuid() == 0 {
		deleteNamespaces()
		dir, err := os.MkdirTemp("", "ambit-cniagent-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		for _, pkg := range []string{".", "../ambit-cni"} {
			cmd := exec.Command("go", "build", "-o", dir+"/", pkg)
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
				return 1
			}
		}
		binDir = dir
	}
	code := m.Run()
	if os.Geteuid() == 0 {
		if left := deleteNamespaces(); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "tests left network namespaces behind (now deleted): %v\n", left)
			code = max(code, 1)
		}
	}
	return code
}

func deleteNamespaces() []string {
	names, _ := netns.List(prefix)
	for _, n := range names {
		_ = netns.Delete(n)
	}
	return names
}

// recorder is a zds.Handler standing in for ztunnel.
type recorder struct{ events chan string }

func (r *recorder) AddPod(_ context.Context, w zds.WorkloadAdd) error {
	id, err := netns.IDOf(w.Netns)
	w.Netns.Close()
	r.events <- fmt.Sprintf("add %s %d %v", w.UID, id.Ino, err)
	return err
}
func (r *recorder) KeepPod(_ context.Context, uid string) error {
	r.events <- "keep " + uid
	return nil
}
func (r *recorder) DelPod(_ context.Context, uid string) error { r.events <- "del " + uid; return nil }
func (r *recorder) SnapshotDone(_ context.Context, uids []string) error {
	r.events <- "snapshot " + strings.Join(uids, ",")
	return nil
}

func (r *recorder) next(t *testing.T) string {
	t.Helper()
	select {
	case e := <-r.events:
		return e
	case <-time.After(testWait):
		t.Fatal("timed out waiting for the fake ztunnel to get a request")
		return ""
	}
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestBinary runs the built cni-agent in local mode: install, ADD, the
// refusals, and exit on SIGTERM, leaving the pods captured or, with
// --uninstall-on-exit, uninstalling.
func TestBinary(t *testing.T) {
	t.Run("Restart", func(t *testing.T) { testBinary(t, false) })
	t.Run("UninstallOnExit", func(t *testing.T) { testBinary(t, true) })
}

func testBinary(t *testing.T, uninstall bool) {
	netnstest.RequireRoot(t)
	backend, err := capture.New(capture.ModeNFTables)
	if err != nil {
		netnstest.SkipOrFail(t, "nftables: %v", err)
	}
	base, err := os.MkdirTemp("", "ambit-ca-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	var (
		confDir   = filepath.Join(base, "net.d")
		cniBinDir = filepath.Join(base, "bin")
		state     = filepath.Join(base, "cluster.json")
		agentSock = filepath.Join(base, "agent.sock")
		zdsSock   = filepath.Join(base, "zt.sock")
		health    = freePort(t)
	)
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	conflist := filepath.Join(confDir, "10-test.conflist")
	primary := []byte(`{"cniVersion":"1.0.0","name":"testnet","plugins":[{"type":"noop-primary"}]}`)
	if err := os.WriteFile(conflist, primary, 0o644); err != nil {
		t.Fatal(err)
	}
	netnstest.New(t, prefix+"a")
	netnstest.New(t, prefix+"b")
	pod := func(name string) localcluster.Pod {
		return localcluster.Pod{UID: "uid-" + name, Name: name, Namespace: "mesh", Node: "node-a", ServiceAccount: "sa", Netns: netns.Path(prefix + name)}
	}
	podA, podB := pod("a"), pod("b")
	if err := localcluster.Write(state, &localcluster.State{
		Generation: 1,
		Namespaces: []localcluster.Namespace{{Name: "mesh", Labels: map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeAmbient}}},
		Pods:       []localcluster.Pod{podA, podB},
	}); err != nil {
		t.Fatal(err)
	}

	var out syncBuffer
	args := []string{"--node", "node-a", "--agent-socket", agentSock, "--zds-socket", zdsSock,
		"--pod-source", "local", "--cluster-state", state, "--cni-bin-dir", cniBinDir, "--cni-conf-dir", confDir,
		"--capture", "nftables", "--health-addr", health, "--log-level", "debug", "--ztunnel-wait", "500ms"}
	if uninstall {
		args = append(args, "--uninstall-on-exit")
	}
	agent := exec.Command(filepath.Join(binDir, "cni-agent"), args...)
	agent.Stdout, agent.Stderr = &out, &out
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = agent.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("cni-agent output:\n%s", out.String())
		}
	})

	// Ready: plugin installed and ZDS serving.
	deadline := time.Now().Add(testWait)
	for {
		resp, err := http.Get("http://" + health + ReadyPath)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("cni-agent exited before ready: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("cni-agent not ready within %s (last: %v)", testWait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The conflist got ambit-cni appended, pointing at our socket, and the
	// binary was copied.
	var conf struct {
		CNIVersion string            `json:"cniVersion"`
		Name       string            `json:"name"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	data, err := os.ReadFile(conflist)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &conf); err != nil || len(conf.Plugins) != 2 {
		t.Fatalf("conflist %s: %v", data, err)
	}
	var entry map[string]any
	if err := json.Unmarshal(conf.Plugins[1], &entry); err != nil || entry["type"] != "ambit-cni" || entry["agent_socket"] != agentSock {
		t.Fatalf("last plugin %s, want ambit-cni with agent_socket %s", conf.Plugins[1], agentSock)
	}
	built, _ := os.ReadFile(filepath.Join(binDir, "ambit-cni"))
	copied, err := os.ReadFile(filepath.Join(cniBinDir, "ambit-cni"))
	if err != nil || !bytes.Equal(built, copied) {
		t.Fatalf("ambit-cni not copied into %s: %v", cniBinDir, err)
	}

	// cniAdd runs the installed plugin as a runtime would, with the entry
	// from the conflist and a prevResult.
	cniAddIn := func(p localcluster.Pod, nsPath string) (string, error) {
		entry["cniVersion"] = conf.CNIVersion
		entry["name"] = conf.Name
		entry["prevResult"] = map[string]any{
			"cniVersion": conf.CNIVersion,
			"interfaces": []any{map[string]any{"name": "eth0", "sandbox": nsPath}},
			"ips":        []any{map[string]any{"address": "10.88.0.5/16", "interface": 0}},
		}
		stdin, _ := json.Marshal(entry)
		cmd := exec.Command(filepath.Join(cniBinDir, "ambit-cni"))
		cmd.Env = []string{
			"CNI_COMMAND=ADD", "CNI_CONTAINERID=c-" + p.Name, "CNI_NETNS=" + nsPath, "CNI_IFNAME=eth0",
			"CNI_PATH=" + cniBinDir,
			"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + p.Namespace + ";K8S_POD_NAME=" + p.Name + ";K8S_POD_UID=" + p.UID,
		}
		cmd.Stdin = bytes.NewReader(stdin)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String() + stderr.String(), err
	}
	cniAdd := func(p localcluster.Pod) (string, error) { return cniAddIn(p, p.Netns) }
	verify := func(p localcluster.Pod) error {
		ns, err := netns.Open(p.Netns)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		return backend.Verify(context.Background(), ns, capture.Config{})
	}

	// No ztunnel connected: ADD fails, saying why and what to do.
	res, err := cniAdd(podB)
	if err == nil {
		t.Fatalf("ADD without ztunnel succeeded: %s", res)
	}
	for _, want := range []string{"ztunnel not connected to the agent on node node-a", "is the ztunnel DaemonSet running"} {
		if !strings.Contains(res, want) {
			t.Errorf("ADD error %q does not say %q", res, want)
		}
	}

	// A ztunnel connects: ADD succeeds once rules are in place and it acked.
	rec := &recorder{events: make(chan string, 100)}
	client, err := zds.NewClient(zds.ClientConfig{Path: zdsSock, Handler: rec, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	cdone := make(chan struct{})
	go func() { defer close(cdone); _ = client.Run(cctx) }()
	t.Cleanup(func() { ccancel(); <-cdone })
	if ev := rec.next(t); ev != "snapshot " {
		t.Fatalf("fake ztunnel got %q, want an empty snapshot", ev)
	}
	res, err = cniAdd(podA)
	if err != nil {
		t.Fatalf("ADD: %v: %s", err, res)
	}
	if !strings.Contains(res, "10.88.0.5/16") {
		t.Errorf("ADD printed %q, want the prevResult", res)
	}
	id, err := netns.IDOfPath(podA.Netns)
	if err != nil {
		t.Fatal(err)
	}
	if ev, want := rec.next(t), "add uid-a "+strconv.FormatUint(id.Ino, 10)+" <nil>"; ev != want {
		t.Errorf("fake ztunnel got %q, want %q", ev, want)
	}
	if err := verify(podA); err != nil {
		t.Errorf("capture rules of pod a: %v", err)
	}

	// Pod b with pod a's netns: refused, naming both; ztunnel gets nothing.
	res, err = cniAddIn(podB, podA.Netns)
	if err == nil {
		t.Fatalf("ADD of pod b with pod a's netns succeeded: %s", res)
	}
	for _, want := range []string{"refusing to enroll pod mesh/b", podA.Netns, "is not pod mesh/b's", "records " + podB.Netns} {
		if !strings.Contains(res, want) {
			t.Errorf("ADD error %q does not say %q", res, want)
		}
	}
	select {
	case ev := <-rec.events:
		t.Fatalf("fake ztunnel got %q after a refused ADD", ev)
	default:
	}

	// A would-be ztunnel in a pod's netns (root, valid hello) is refused
	// and the connected one keeps getting pods.
	dial := exec.Command("ip", "netns", "exec", prefix+"b", os.Args[0])
	dial.Env = append(os.Environ(), envZDSHello+"="+zdsSock)
	if dout, err := dial.CombinedOutput(); err != nil {
		t.Fatalf("ZDS connection from pod b's netns: %v: %s", err, dout)
	}
	if !strings.Contains(out.String(), "not the node's") {
		t.Errorf("agent log does not report the refused ZDS peer:\n%s", out.String())
	}
	res, err = cniAdd(podB)
	if err != nil {
		t.Fatalf("ADD of pod b: %v: %s", err, res)
	}
	idB, err := netns.IDOfPath(podB.Netns)
	if err != nil {
		t.Fatal(err)
	}
	if ev, want := rec.next(t), "add uid-b "+strconv.FormatUint(idB.Ino, 10)+" <nil>"; ev != want {
		t.Errorf("fake ztunnel got %q, want %q (and no new snapshot)", ev, want)
	}

	// SIGTERM: exits 0 and leaves the pod's rules in place.
	if err := agent.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		if err != nil {
			t.Errorf("cni-agent exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(testWait):
		t.Fatal("cni-agent did not exit after SIGTERM")
	}
	if _, err := os.Stat(agentSock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("agent socket left behind: %v", err)
	}
	if !uninstall {
		if err := verify(podA); err != nil {
			t.Errorf("capture rules of pod a after the agent stopped: %v", err)
		}
		return
	}
	// Uninstalled: no pod captured, the conflist as the primary CNI wrote
	// it, the binary gone, in that order (the log's).
	for _, p := range []localcluster.Pod{podA, podB} {
		if err := verify(p); !errors.Is(err, capture.ErrMismatch) {
			t.Errorf("pod %s after the uninstall: Verify = %v, want no rules", p.Name, err)
		}
	}
	var compact bytes.Buffer
	if data, err := os.ReadFile(conflist); err != nil || json.Compact(&compact, data) != nil || !bytes.Equal(compact.Bytes(), primary) {
		t.Errorf("conflist after the uninstall: %s (%v), want %s", data, err, primary)
	}
	if _, err := os.Stat(filepath.Join(cniBinDir, "ambit-cni")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ambit-cni binary after the uninstall: %v, want it removed", err)
	}
	log := out.String()
	steps := []string{"removed ambit-cni from the CNI config", "released every captured pod", "removed the ambit-cni binary"}
	last := -1
	for _, s := range steps {
		i := strings.Index(log, s)
		if i < 0 || i < last {
			t.Errorf("agent log: %q missing or out of order (want %q):\n%s", s, steps, log)
		}
		last = i
	}
}
