package kube

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/ctl/local"
	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/testnode"
	"github.com/ambit-mesh/ambit/e2e/meshcheck"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

// Fixed parts of the test mesh.
const (
	nodeA, nodeB = "node-a", "node-b"
	systemNS     = "istio-system"
	ztunnelSA    = "ztunnel"
	agentSA      = "ambit-cni"
	// agentDaemonSet is the cni-agents' DaemonSet (--daemonset): while it
	// exists an agent's exit leaves the node as it is; without it, the
	// agent uninstalls itself.
	agentDaemonSet = "ambit-cni-node"
	trustDomain    = "cluster.local"
	istiodPort     = 15012
	istiodReady    = 8080
	caServerName   = "istiod.istio-system.svc"
	caAudience     = "istio-ca"
	setupTimeout   = 2 * time.Minute
	convergeWithin = 15 * time.Second
)

// binaries the test builds, by name and package.
var binaries = []struct{ name, pkg string }{
	{"istiod", "./istiod/cmd/istiod"},
	{"cni-agent", "./cni/cmd/cni-agent"},
	{"ambit-cni", "./cni/cmd/ambit-cni"},
	{"ztunnel", "./ztunnel/cmd/ztunnel"},
	{"ambit-echo", "./e2e/echo/cmd/ambit-echo"},
}

// mesh is a running Kubernetes-mode mesh: the shared cluster, two test
// nodes, istiod in the backbone, and a cni-agent and ztunnel per node.
type mesh struct {
	t        *testing.T
	c        *cluster.Cluster
	nodes    *testnode.Nodes
	dir      string
	bin      string
	rootCert string
	// ztunnelToken is each node's ztunnel token (bound to its Pod object).
	ztunnelToken map[string]string
	// procs are the node processes startNode runs, by node and name
	// ("cni-agent", "ztunnel"), for tests that kill and restart them.
	procs map[string]map[string]*nodeProc
}

// nodeProc is a process of a node and how to start it again.
type nodeProc struct {
	node, name, bin string
	args            []string
	proc            local.Proc
}

func (m *mesh) istiodAddr() string {
	return net.JoinHostPort(testnode.BackboneIP.String(), fmt.Sprint(istiodPort))
}

// newMesh sets the mesh up; everything is removed in t.Cleanup.
func newMesh(t *testing.T) *mesh {
	t.Helper()
	netnstest.RequireRoot(t)
	for _, tool := range []string{"nsenter", "nft", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			netnstest.SkipOrFail(t, "%s not installed (hack/install-deps.sh installs it): %v", tool, err)
		}
	}
	c := cluster.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	m := &mesh{t: t, c: c, dir: t.TempDir(), ztunnelToken: map[string]string{}, procs: map[string]map[string]*nodeProc{}}
	m.bin = filepath.Join(m.dir, "bin")
	crds, err := cluster.IstioCRDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.ApplyCRDs(ctx, c.Config, crds); err != nil {
		t.Fatalf("applying Istio CRDs: %v", err)
	}
	m.build(t)
	m.startNodes(ctx, t)
	m.createSystem(ctx)
	m.startIstiod(ctx)
	for _, node := range []string{nodeA, nodeB} {
		m.startNode(ctx, node)
	}
	return m
}

func (m *mesh) build(t *testing.T) {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"build", "-o", m.bin + "/"}
	for _, b := range binaries {
		args = append(args, b.pkg)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// createSystem creates istio-system, ztunnel's service account and the
// cni-agent's, with the RBAC that cni/agent.KubeSource documents.
func (m *mesh) createSystem(ctx context.Context) {
	t, cl := m.t, m.c.Client
	t.Helper()
	if _, err := m.c.CreateNamespace(ctx, systemNS, nil); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, sa := range []string{ztunnelSA, agentSA} {
		if _, err := m.c.CreateServiceAccount(ctx, systemNS, sa); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "ambit-cni"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "watch"}},
			// --daemonset: is this exit an uninstall?
			{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
		},
	}
	if _, err := cl.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "ambit-cni"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "ambit-cni"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: systemNS, Name: agentSA}},
	}
	if _, err := cl.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// writeFile writes a file in the mesh's dir and returns its path.
func (m *mesh) writeFile(name, content string) string {
	m.t.Helper()
	p := filepath.Join(m.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		m.t.Fatal(err)
	}
	return p
}

// startIstiod runs istiod in the backbone, reading the cluster as admin
// and authenticating CA (and xDS) callers by TokenReview.
func (m *mesh) startIstiod(ctx context.Context) {
	t := m.t
	t.Helper()
	kc, err := m.nodes.Kubeconfig("istiod", m.writeFile("tokens/admin", m.c.AdminToken))
	if err != nil {
		t.Fatal(err)
	}
	m.rootCert = filepath.Join(m.dir, "root-cert.pem")
	ip := testnode.BackboneIP.String()
	_, err = m.nodes.Launch("", "istiod", filepath.Join(m.bin, "istiod"), []string{
		"--config-source", "kubernetes", "--kubeconfig", kc,
		"--grpc-addr", m.istiodAddr(), "--serving-ip", ip,
		"--readiness-addr", net.JoinHostPort(ip, fmt.Sprint(istiodReady)),
		"--state-dir", filepath.Join(m.dir, "istiod"), "--root-cert-out", m.rootCert,
		"--ztunnel-sa", systemNS + "/" + ztunnelSA, "--trust-domain", trustDomain, "--log-level", "debug",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.waitHTTP(ctx, "", "istiod readiness", fmt.Sprintf("http://%s:%d/ready", ip, istiodReady))
}

// startNode creates the node's ztunnel Pod object (host network, so the
// test node gives it no sandbox), its bound token, and runs the node's
// cni-agent and ztunnel.
func (m *mesh) startNode(ctx context.Context, node string) {
	t, cl := m.t, m.c.Client
	t.Helper()
	name := "ztunnel-" + node
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: systemNS, Name: name, Labels: map[string]string{"app": "ztunnel"}},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: ztunnelSA, HostNetwork: true,
			Containers: []corev1.Container{{Name: "istio-proxy", Image: "ambit/ztunnel"}},
		},
	}
	_ = cl.CoreV1().Pods(systemNS).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	if err := cluster.Eventually(ctx, "creating "+name, func(ctx context.Context) error {
		_, err := cl.CoreV1().Pods(systemNS).Create(ctx, pod, metav1.CreateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cl.CoreV1().Pods(systemNS).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
	zp, err := m.nodes.WaitRunning(ctx, systemNS, name)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cl.CoreV1().ServiceAccounts(systemNS).CreateToken(ctx, ztunnelSA, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:         []string{caAudience},
		ExpirationSeconds: new(int64(3600)),
		BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: name, UID: zp.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m.ztunnelToken[node] = tok.Status.Token
	ztTokenFile := m.writeFile("tokens/ztunnel-"+node, tok.Status.Token)
	agentTok, err := m.c.CreateToken(ctx, systemNS, agentSA, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agentKC, err := m.nodes.Kubeconfig("cni-agent-"+node, m.writeFile("tokens/cni-agent-"+node, agentTok))
	if err != nil {
		t.Fatal(err)
	}
	nd := m.nodes.NodeDir(node)
	zds := filepath.Join(nd, "ztunnel.sock")
	m.launch(node, "cni-agent", []string{
		"--node", node, "--pod-source", "kubernetes", "--kubeconfig", agentKC,
		"--agent-socket", filepath.Join(nd, "cni-agent.sock"), "--zds-socket", zds,
		"--cni-bin-dir", filepath.Join(m.dir, "cni-bin"), "--cni-conf-dir", m.nodes.NetD(node),
		"--plugin-binary", filepath.Join(m.bin, "ambit-cni"), "--daemonset", systemNS + "/" + agentDaemonSet, "--log-level", "debug",
	})
	zargs := []string{
		"--node", node, "--zds-socket", zds, "--trust-domain", trustDomain,
		"--ca-addr", m.istiodAddr(), "--ca-root", m.rootCert, "--ca-server-name", caServerName,
		"--token-file", ztTokenFile, "--xds-addr", m.istiodAddr(), "--log-level", "debug",
	}
	m.launch(node, "ztunnel", zargs)
	m.waitNodeReady(ctx, node)
}

// waitNodeReady waits for the node's cni-agent and ztunnel to be ready.
func (m *mesh) waitNodeReady(ctx context.Context, node string) {
	m.waitHTTP(ctx, node, "cni-agent readiness on "+node, "http://127.0.0.1:8000/healthz/ready")
	m.waitHTTP(ctx, node, "ztunnel readiness on "+node, "http://127.0.0.1:15021/healthz/ready")
}

// launch runs m.bin/name with args in the node as "<name>-<node>" and
// records it in m.procs.
func (m *mesh) launch(node, name string, args []string) {
	m.t.Helper()
	np := &nodeProc{node: node, name: name, bin: filepath.Join(m.bin, name), args: args}
	m.relaunch(np)
	if m.procs[node] == nil {
		m.procs[node] = map[string]*nodeProc{}
	}
	m.procs[node][name] = np
}

// relaunch starts np (again), appending to its log.
func (m *mesh) relaunch(np *nodeProc) {
	m.t.Helper()
	p, err := m.nodes.Launch(np.node, np.name+"-"+np.node, np.bin, np.args, nil)
	if err != nil {
		m.t.Fatal(err)
	}
	np.proc = p
}

// httpClient makes requests through dial (from inside a network
// namespace), one connection per request.
func httpClient(dial meshcheck.DialFunc, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: dial, DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12},
	}}
}

// get makes a GET from inside the network namespace at nsPath and returns
// the body of a 200 answer.
func get(ctx context.Context, nsPath, url string, timeout time.Duration) (string, error) {
	return getWatched(ctx, nsPath, url, timeout, nil)
}

// getWatched is get whose error also carries the first reset its
// connection saw, when w is not nil (see meshcheck.ResetWatch).
func getWatched(ctx context.Context, nsPath, url string, timeout time.Duration, w *meshcheck.ResetWatch) (string, error) {
	ns, err := netns.Open(nsPath)
	if err != nil {
		return "", err
	}
	defer ns.Close()
	dial := meshcheck.DialFunc((&netns.Sockets{NS: ns}).Dial)
	if w != nil {
		dial = w.Dial(dial)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := httpClient(dial, timeout).Do(req)
	if err != nil {
		return "", w.Err(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", w.Err(err)
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: status %d: %s", url, resp.StatusCode, b)
	}
	return string(b), nil
}

// nodeGet is get from a node's namespace ("" is the backbone).
func (m *mesh) nodeGet(ctx context.Context, node, url string) (string, error) {
	ns := testnode.BackboneNetns
	if node != "" {
		ns = testnode.NodeNetns(node)
	}
	return get(ctx, netns.Path(ns), url, 3*time.Second)
}

func (m *mesh) waitHTTP(ctx context.Context, node, what, url string) {
	m.t.Helper()
	if err := cluster.Eventually(ctx, what, func(ctx context.Context) error {
		_, err := m.nodeGet(ctx, node, url)
		return err
	}); err != nil {
		m.t.Fatal(err)
	}
}

// dumpLogs prints the tail of every process log of the mesh.
func (m *mesh) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(m.dir, "nodes", "logs", "*.log"))
	logs = append(logs, filepath.Join(m.dir, "testnode.log"))
	for _, p := range logs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		m.t.Logf("--- %s (tail):\n%s", filepath.Base(p), b)
	}
}

// startNodes installs the CNI plugins and starts the test nodes node-a and
// node-b for m (m.bin must hold the built binaries); they stop, and leave no
// network namespace, when the test ends (dumping the logs if it failed).
func (m *mesh) startNodes(ctx context.Context, t *testing.T) *testnode.Nodes {
	t.Helper()
	c := m.c
	cniBin := filepath.Join(m.dir, "cni-bin")
	if err := local.InstallPlugins(ctx, cniBin, nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(m.dir, "testnode.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	nodes, err := testnode.Start(ctx, testnode.Options{
		Client: c.Client, APIServer: strings.TrimPrefix(c.Server, "https://"), CAFile: c.CAFile,
		Nodes: []string{nodeA, nodeB}, Dir: filepath.Join(m.dir, "nodes"), CNIBinDir: cniBin, BinDir: m.bin,
		Logger: slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	m.nodes = nodes
	t.Cleanup(func() {
		if t.Failed() {
			m.dumpLogs()
		}
		if err := nodes.Stop(); err != nil {
			t.Errorf("stopping the test nodes: %v", err)
		}
		if left, _ := netns.List(testnode.NetnsPrefix); len(left) > 0 {
			t.Errorf("network namespaces left: %v", left)
		}
	})
	return nodes
}
