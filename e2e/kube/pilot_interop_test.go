package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/pilot"
	"github.com/ambit-mesh/ambit/e2e/kube/testnode"
	"github.com/ambit-mesh/ambit/e2e/meshcheck"
	"github.com/ambit-mesh/ambit/istiod/ambient"
	"github.com/ambit-mesh/ambit/pkg/enrollment"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/admin"
	"github.com/ambit-mesh/ambit/ztunnel/identity"
)

// pilotNodeAccounts lets ztunnel ask pilot's CA for the identities of the
// pods on its node (Istio's node authorization; pilot refuses
// ImpersonatedIdentity without it).
const pilotNodeAccounts = "CA_TRUSTED_NODE_ACCOUNTS=" + systemNS + "/" + ztunnelSA

// TestPilotInterop runs Ambit's data plane (per node: cni-agent with the
// Kubernetes pod source and ztunnel) with a real Istio pilot-discovery as
// the control plane instead of Ambit's istiod: ztunnel's workloads come
// from pilot's workload xDS and its certificates from pilot's CA, both on
// pilot's secure gRPC port, reached from the nodes through a forwarder in
// the backbone. Ambit's istiod does not run meanwhile (the test nodes,
// which host it in TestKubeMesh, are this test's own).
func TestPilotInterop(t *testing.T) {
	m, p, root := newPilotMesh(t)
	ctx := context.Background()
	const ns = "pmesh"
	m.namespace(ctx, ns, map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeAmbient})
	server := m.pod(ctx, ns, "server", nodeB, []string{"ambit-echo", "server", "-grpc", "", "-raw", ""})
	client := m.pod(ctx, ns, "client", nodeA, nil)
	serverURL := fmt.Sprintf("http://%s/", net.JoinHostPort(server.Status.PodIP, "8080"))
	for _, pod := range []*corev1.Pod{server, client} {
		m.waitCaptured(t, pod, true)
	}

	t.Run("ConfigDumpMatchesPilot", func(t *testing.T) {
		w := m.watchPilot(t, p, root)
		uids := []string{ambient.PodUID(pilot.ClusterID, ns, "server"), ambient.PodUID(pilot.ClusterID, ns, "client")}
		wctx, cancel := context.WithTimeout(ctx, convergeWithin)
		defer cancel()
		// pilot marks a pod HBONE once the agent has annotated it.
		if err := w.WaitFor(wctx, "pilot to describe both pods as HBONE", func(r pilot.Resources) error {
			for _, uid := range uids {
				pw := r.Workloads()[uid]
				if pw == nil || pw.GetTunnelProtocol().String() != "HBONE" {
					return fmt.Errorf("workload %s: %v", uid, pw)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		want := map[string]map[string]any{}
		for _, uid := range uids {
			want[uid] = workloadFields(t, w.Resources().Workloads()[uid])
			// Pilot leaves the mesh's own trust domain out; ztunnel's
			// store fills it in (its --trust-domain).
			if _, ok := want[uid]["trustDomain"]; !ok {
				want[uid]["trustDomain"] = pilot.TrustDomain
			}
		}
		for _, node := range []string{nodeA, nodeB} {
			var last error
			err := cluster.Eventually(wctx, "ztunnel's /config_dump on "+node+" to match pilot", func(ctx context.Context) error {
				last = m.dumpMatches(ctx, node, want)
				return last
			})
			if err != nil {
				t.Fatalf("%v (last: %v)", err, last)
			}
		}
		if n := w.NACKs(); len(n) > 0 {
			t.Errorf("the test's own watcher NACKed pilot: %v", n)
		}
	})

	t.Run("CertificatesFromPilotCA", func(t *testing.T) {
		// The server pod's HBONE listener presents its certificate: issued
		// by pilot's CA for the server's service account.
		m.mustGet(t, client, serverURL, convergeWithin)
		chain := m.hboneChain(t, nodeA, server.Status.PodIP)
		verifyPilotChain(t, chain, root, fmt.Sprintf("spiffe://%s/ns/%s/sa/server", trustDomain, ns))
		// Pilot's node authorization: node-a's ztunnel may not ask for
		// an identity that runs only on node-b.
		_, err := m.fetchPilotCert(t, nodeA, mustID(t, ns, "server"))
		if code := status.Code(err); code != codes.Unauthenticated {
			t.Errorf("node-a's ztunnel asking pilot for %s/server: %v, want Unauthenticated (pilot's refusal)", ns, err)
		}
		if _, err := m.fetchPilotCert(t, nodeB, mustID(t, ns, "server")); err != nil {
			t.Errorf("node-b's ztunnel asking pilot for %s/server: %v", ns, err)
		}
	})

	t.Run("HBONEAcrossNodes", func(t *testing.T) {
		m.mustGet(t, client, serverURL, convergeWithin)
		text, err := m.nodeGet(ctx, nodeB, "http://127.0.0.1:15020/stats/prometheus")
		if err != nil {
			t.Fatal(err)
		}
		if !hasMetric(text, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "destination", "source_principal": mustID(t, ns, "client").String()}) {
			t.Errorf("node-b's ztunnel counted no inbound HBONE connection from the client's identity:\n%s", text)
		}
	})

	t.Run("DenyPolicyAsPilotTranslatesIt", func(t *testing.T) {
		m.mustGet(t, client, serverURL, convergeWithin)
		policy := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "deny-client", "namespace": ns},
			"spec": map[string]any{
				"selector": map[string]any{"matchLabels": map[string]any{"app": "server"}},
				"action":   "DENY",
				"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{
					"principals": []any{fmt.Sprintf("%s/ns/%s/sa/client", trustDomain, ns)},
				}}}}},
			},
		}}
		start := time.Now()
		m.create(t, authzGVR, policy)
		r := meshcheck.ExpectDenied(t, meshcheck.Denial{
			What: "GET " + serverURL + " from " + ns + "/client", Call: m.caller(client, serverURL),
			Denials: m.denials(nodeB, map[string]string{
				"reporter": "destination", "source_principal": mustID(t, ns, "client").String(),
				"destination_principal": mustID(t, ns, "server").String(),
			}),
			Start: start, Within: 3 * time.Second,
		})
		t.Logf("reset by node-b's ztunnel %v after the policy was created; %d calls over %v all reset and counted DENY",
			r.First.Round(time.Millisecond), r.Refused, meshcheck.LastingOver)
		start = time.Now()
		m.delete(t, authzGVR, ns, "deny-client")
		took := m.pollAllowed(t, client, serverURL, start, 3*time.Second)
		t.Logf("allowed again %v after the policy was deleted", took)
	})

	t.Run("NoNACKs", func(t *testing.T) {
		for _, node := range []string{nodeA, nodeB} {
			b, err := os.ReadFile(m.nodes.LogPath("ztunnel-" + node))
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "NACK") {
					t.Errorf("ztunnel on %s rejected pilot's xDS: %s", node, line)
				}
			}
		}
	})
}

// newPilotMesh starts what newMesh starts, but with pilot-discovery (on
// the host's loopback, its secure gRPC port forwarded to the backbone at
// istiodAddr) as the control plane. It returns pilot and its root
// certificate (PEM).
func newPilotMesh(t *testing.T) (*mesh, *pilot.Pilot, []byte) {
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
	m := &mesh{t: t, c: c, dir: t.TempDir(), ztunnelToken: map[string]string{}}
	m.bin = filepath.Join(m.dir, "bin")
	p := startPilot(t, c)
	m.build(t)
	nodes := m.startNodes(ctx, t)
	if err := nodes.Forward(ctx, m.istiodAddr(), p.SecureGRPCAddr); err != nil {
		t.Fatal(err)
	}
	m.createSystem(ctx)
	root := pilotRoot(ctx, t, p)
	m.rootCert = m.writeFile("pilot-root-cert.pem", string(root))
	for _, node := range []string{nodeA, nodeB} {
		m.startPilotNode(ctx, node)
	}
	return m, p, root
}

// startPilot starts pilot-discovery against c with node authorization for
// ztunnel's service account; it is stopped in t.Cleanup.
func startPilot(t *testing.T, c *cluster.Cluster) *pilot.Pilot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute) // a cold build takes ~8 min
	defer cancel()
	if testing.Short() && os.Getenv(pilot.EnvBinary) == "" {
		v, err := pilot.IstioVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		bin, err := pilot.BinaryPath(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(bin); err != nil {
			netnstest.SkipOrFail(t, "-short and %s is not built (e2e/kube/pilot/build.sh builds it in ~8 min)", bin)
		}
	}
	start := time.Now()
	p, err := pilot.Start(ctx, c, pilot.Options{Env: []string{pilotNodeAccounts}, Progress: logWriter{t}})
	if err != nil {
		if errors.Is(err, pilot.ErrNoBinary) {
			netnstest.SkipOrFail(t, "%v", err)
		}
		t.Fatal(err)
	}
	t.Logf("pilot-discovery ready in %v (log %s)", time.Since(start).Round(time.Millisecond), p.Log)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- tail of pilot-discovery's log ---\n%s", p.Tail(60))
		}
		if err := p.Stop(); err != nil {
			t.Errorf("stopping pilot-discovery: %v", err)
		}
	})
	return p
}

// pilotRoot returns pilot's root certificate from the istio-ca-root-cert
// ConfigMap of istio-system once it verifies pilot's serving certificate
// (the ConfigMap may still hold the root of an istiod that ran before).
func pilotRoot(ctx context.Context, t *testing.T, p *pilot.Pilot) []byte {
	t.Helper()
	var root []byte
	err := cluster.Eventually(ctx, "pilot's root in ConfigMap "+pilot.RootCertConfigMap, func(ctx context.Context) error {
		pemBytes, err := p.RootCert(ctx, pilot.Namespace)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return errors.New("no certificate in it")
		}
		d := tls.Dialer{Config: &tls.Config{RootCAs: pool, ServerName: pilot.ServerName, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}}
		conn, err := d.DialContext(ctx, "tcp", p.SecureGRPCAddr)
		if err != nil {
			return err
		}
		conn.Close()
		root = pemBytes
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// startPilotNode is startNode with ztunnel pointed at pilot: its Pod
// object on the node (pilot's node authorization looks the token's pod up)
// and a token bound to it, the node's cni-agent, and ztunnel with the node
// ID and cluster ID pilot expects.
func (m *mesh) startPilotNode(ctx context.Context, node string) {
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
		Audiences:         []string{pilot.CAAudience},
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
	if _, err := m.nodes.Launch(node, "cni-agent-"+node, filepath.Join(m.bin, "cni-agent"), []string{
		"--node", node, "--pod-source", "kubernetes", "--kubeconfig", agentKC,
		"--agent-socket", filepath.Join(nd, "cni-agent.sock"), "--zds-socket", zds,
		"--cni-bin-dir", filepath.Join(m.dir, "cni-bin"), "--cni-conf-dir", m.nodes.NetD(node),
		"--plugin-binary", filepath.Join(m.bin, "ambit-cni"), "--uninstall-on-exit", "--log-level", "debug", "--trust-netns-annotation",
	}, nil); err != nil {
		t.Fatal(err)
	}
	zargs := []string{
		"--node", node, "--zds-socket", zds, "--trust-domain", pilot.TrustDomain,
		"--ca-addr", m.istiodAddr(), "--ca-root", m.rootCert, "--ca-server-name", pilot.ServerName,
		"--token-file", ztTokenFile, "--xds-addr", m.istiodAddr(), "--log-level", "debug",
		"--pod-name", name, "--pod-namespace", systemNS, "--pod-ip", zp.Status.PodIP, "--cluster-id", pilot.ClusterID,
	}
	if _, err := m.nodes.Launch(node, "ztunnel-"+node, filepath.Join(m.bin, "ztunnel"), zargs, nil); err != nil {
		t.Fatal(err)
	}
	m.waitHTTP(ctx, node, "cni-agent readiness on "+node, "http://127.0.0.1:8000/healthz/ready")
	m.waitHTTP(ctx, node, "ztunnel readiness on "+node, "http://127.0.0.1:15021/healthz/ready")
}

// watchPilot opens the test's own workload discovery stream to pilot, as
// node-a's ztunnel (its bound token, its node ID).
func (m *mesh) watchPilot(t *testing.T, p *pilot.Pilot, root []byte) *pilot.Watcher {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	id, md := pilot.ZtunnelNode(m.nodes.IP(nodeA).String(), "ztunnel-"+nodeA, systemNS, ztunnelSA, nodeA)
	w, err := pilot.Watch(pilot.WatchOptions{
		Address: p.SecureGRPCAddr, Token: m.ztunnelToken[nodeA], NodeID: id, Metadata: md,
		TLS: &tls.Config{RootCAs: pool, ServerName: pilot.ServerName, MinVersion: tls.VersionTLS12},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// comparedFields are the Workload fields (protojson names) ztunnel's dump
// must carry exactly as pilot sent them.
var comparedFields = []string{
	"uid", "name", "namespace", "addresses", "network", "tunnelProtocol", "trustDomain",
	"serviceAccount", "node", "clusterId", "workloadType", "workloadName", "canonicalName", "status",
}

// workloadFields renders a Workload as /config_dump does (protojson,
// addresses as text) restricted to comparedFields.
func workloadFields(t *testing.T, w proto.Message) map[string]any {
	t.Helper()
	b, err := protojson.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	var all map[string]any
	if err := json.Unmarshal(b, &all); err != nil {
		t.Fatal(err)
	}
	if addrs, ok := all["addresses"].([]any); ok {
		text := make([]any, 0, len(addrs))
		for _, a := range addrs {
			raw, err := base64.StdEncoding.DecodeString(a.(string))
			if err != nil {
				t.Fatal(err)
			}
			ip, ok := netip.AddrFromSlice(raw)
			if !ok {
				t.Fatalf("workload address %q is not an IP", a)
			}
			text = append(text, ip.String())
		}
		all["addresses"] = text
	}
	return pick(all)
}

func pick(all map[string]any) map[string]any {
	out := map[string]any{}
	for _, f := range comparedFields {
		if v, ok := all[f]; ok {
			out[f] = v
		}
	}
	return out
}

// dumpMatches checks that the node's ztunnel's /config_dump holds every
// wanted workload (by uid) with the same compared fields.
func (m *mesh) dumpMatches(ctx context.Context, node string, want map[string]map[string]any) error {
	body, err := m.nodeGet(ctx, node, "http://127.0.0.1:15000/config_dump")
	if err != nil {
		return err
	}
	var d admin.ConfigDump
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		return fmt.Errorf("decoding /config_dump: %w", err)
	}
	got := map[string]map[string]any{}
	for _, raw := range d.Workloads {
		var all map[string]any
		if err := json.Unmarshal(raw, &all); err != nil {
			return err
		}
		if uid, _ := all["uid"].(string); uid != "" {
			got[uid] = pick(all)
		}
	}
	for uid, w := range want {
		g := got[uid]
		if g == nil {
			return fmt.Errorf("no workload %s in the dump (%d workloads)", uid, len(got))
		}
		wj, _ := json.Marshal(w)
		gj, _ := json.Marshal(g)
		if !bytes.Equal(wj, gj) {
			return fmt.Errorf("workload %s:\n dump  %s\n pilot %s", uid, gj, wj)
		}
	}
	return nil
}

// hboneChain makes a TLS handshake from node's namespace to the pod's
// HBONE port and returns the certificates the pod's ztunnel presented (the
// handshake itself fails: the test has no client certificate).
func (m *mesh) hboneChain(t *testing.T, node, podIP string) []*x509.Certificate {
	t.Helper()
	ns, err := netns.OpenName(testnode.NodeNetns(node))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := (&netns.Sockets{NS: ns}).Dial(ctx, "tcp", net.JoinHostPort(podIP, "15008"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var chain []*x509.Certificate
	conn := tls.Client(raw, &tls.Config{
		InsecureSkipVerify: true, // verified below, against pilot's root
		MinVersion:         tls.VersionTLS13, NextProtos: []string{"h2"},
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			for _, r := range rawCerts {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				chain = append(chain, c)
			}
			return nil
		},
	})
	_ = conn.HandshakeContext(ctx)
	if len(chain) == 0 {
		t.Fatalf("no certificate from %s:15008", podIP)
	}
	return chain
}

// verifyPilotChain checks that chain's leaf names want and verifies up to
// pilot's root (and that the root is pilot's, byte for byte).
func verifyPilotChain(t *testing.T, chain []*x509.Certificate, rootPEM []byte, want string) {
	t.Helper()
	block, _ := pem.Decode(rootPEM)
	if block == nil {
		t.Fatal("pilot's root is not PEM")
	}
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Errorf("leaf URI SANs %v, want %s", leaf.URIs, want)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	verified, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		t.Fatalf("the HBONE certificate of %s does not verify to pilot's root: %v (issuer %s)", want, err, leaf.Issuer)
	}
	for _, c := range verified {
		if got := c[len(c)-1]; !got.Equal(root) {
			t.Errorf("chain ends at %s, not pilot's root %s", got.Subject, root.Subject)
		}
	}
	t.Logf("%s: issued by %q, root %q (pilot's)", want, leaf.Issuer, root.Subject)
}

// fetchPilotCert asks pilot's CA (through the backbone forwarder) for id
// with node's ztunnel token and the ClusterID header, as that node's
// ztunnel does.
func (m *mesh) fetchPilotCert(t *testing.T, node string, id spiffe.ID) (*identity.Issued, error) {
	t.Helper()
	bb, err := netns.OpenName(testnode.BackboneNetns)
	if err != nil {
		t.Fatal(err)
	}
	defer bb.Close()
	sockets := &netns.Sockets{NS: bb}
	token := m.ztunnelToken[node]
	c, err := identity.NewCAClient(identity.CAClientOptions{
		Address: m.istiodAddr(), ServerName: pilot.ServerName, RootCAFile: m.rootCert, ClusterID: pilot.ClusterID,
		Token: func(context.Context) (string, error) { return token, nil },
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return sockets.Dial(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Fetch(ctx, id)
}

// logWriter sends pilot's build progress to the test's log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
