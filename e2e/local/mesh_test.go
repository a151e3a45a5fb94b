package local

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/e2e/meshcheck"
)

// meshTopology is the mesh TestMeshBehaviour shares among its subtests:
// enrolled pods on both nodes (victim is the one un-enrolled and
// re-enrolled), and a namespace outside the mesh with a pod on each node.
const meshTopology = `
trustDomain: cluster.local
nodes: [{name: node-a}, {name: node-b}]
namespaces:
  - {name: demo, labels: {istio.io/dataplane-mode: ambient}}
  - {name: legacy}
pods:
  - {name: client, namespace: demo, node: node-a, serviceAccount: client, labels: {app: client}, run: ["ambit-echo", "server", "-name", "{{name}}"]}
  - {name: server-a, namespace: demo, node: node-a, serviceAccount: server, labels: {app: echo-a}, run: ["ambit-echo", "server", "-name", "{{name}}"]}
  - {name: server-b, namespace: demo, node: node-b, serviceAccount: server, labels: {app: echo-b}, run: ["ambit-echo", "server", "-name", "{{name}}"]}
  - {name: victim, namespace: demo, node: node-b, serviceAccount: victim, labels: {app: victim}, run: ["ambit-echo", "server", "-name", "{{name}}"]}
  - {name: legacy, namespace: legacy, node: node-b, serviceAccount: legacy, labels: {app: legacy}, run: ["ambit-echo", "server", "-name", "{{name}}"]}
  - {name: legacy-a, namespace: legacy, node: node-a, serviceAccount: legacy, labels: {app: legacy-a}, run: ["ambit-echo", "server", "-name", "{{name}}"]}
`

const clientID = "spiffe://cluster.local/ns/demo/sa/client"

// converge bounds how long a change (policy, label, restart) may take to
// reach the data path.
const converge = 10 * time.Second

// writeFile writes a topology fragment into the test's temp dir.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMeshBehaviour brings one mesh up and checks, in order, what the mesh
// promises: identities on the wire, encryption between nodes, the rules
// between enrolled and non-enrolled pods, failing closed, un-enrolling and
// ztunnel restarts. Each subtest leaves the mesh as it found it.
func TestMeshBehaviour(t *testing.T) {
	requireBinaries(t)
	requireTools(t, "tcpdump", "nft", "nsenter", "ip")
	m := newMesh(t)
	m.must("up", "-f", writeFile(t, "mesh.yaml", meshTopology))
	st := m.status()
	ip := map[string]netip.Addr{}
	uid := map[string]string{}
	for _, p := range st.Pods {
		a, err := netip.ParseAddr(p.IP)
		if err != nil || !p.Running {
			t.Fatalf("pod %s/%s not up: %+v", p.Namespace, p.Name, p)
		}
		ip[p.Name], uid[p.Name] = a, p.UID
	}
	addr := func(pod string, port int) string { return netip.AddrPortFrom(ip[pod], uint16(port)).String() }

	t.Run("server ztunnel sees the client identity", func(t *testing.T) {
		m := m.in(t)
		for _, c := range []struct{ name, server, node string }{
			{"other node", "server-b", "node-b"},
			{"same node", "server-a", "node-a"},
		} {
			t.Run(c.name, func(t *testing.T) {
				m := m.in(t)
				before := inboundOpened(t, c.node, clientID, c.server)
				out := m.mustCall(t, converge, "demo/client", "http", addr(c.server, 8080), newMarker("id"), 3)
				if !strings.Contains(out, "answered by "+c.server+"(3)") {
					t.Errorf("not answered by %s: %s", c.server, out)
				}
				// Through the mesh the server's ztunnel dials the app from
				// inside the server pod: the app sees its own address.
				if got := peerOf(out); got != ip[c.server] {
					t.Errorf("server saw peer %v, want its own address %v (mesh path): %s", got, ip[c.server], out)
				}
				eventually(t, "destination metrics", 5*time.Second, func() error {
					if after := inboundOpened(t, c.node, clientID, c.server); after < before+3 {
						return fmt.Errorf("ztunnel on %s: connections opened from %s to %s went %v -> %v, want +3", c.node, clientID, c.server, before, after)
					}
					return nil
				})
				logs, err := os.ReadFile(filepath.Join(m.state, "logs", "ztunnel-"+c.node+".log"))
				if err != nil {
					t.Fatal(err)
				}
				if !hasLogLine(string(logs), "direction=inbound ", "pod="+c.server+" ", "src_identity="+clientID+" ") {
					t.Errorf("ztunnel-%s.log has no inbound line from %s to %s", c.node, clientID, c.server)
				}
			})
		}
	})

	t.Run("node-to-node traffic is TLS", func(t *testing.T) {
		m := m.in(t)
		secret, plain := newMarker("secret"), newMarker("plain")
		capt := startCapture(t, "ambitl-node-node-a", "eth0")
		m.mustCall(t, converge, "demo/client", "http", addr("server-b", 8080), secret, 3)
		m.mustCall(t, converge, "demo/client", "tcp", addr("server-b", 9000), secret, 2)
		// No earlier subtest called victim: a new HBONE connection, so the
		// capture holds its TLS handshake too.
		m.mustCall(t, converge, "demo/client", "http", addr("victim", 8080), secret, 1)
		// Positive control: the same capture sees legacy plaintext.
		m.mustCall(t, converge, "legacy/legacy-a", "http", addr("legacy", 8080), plain, 1)
		pkts, raw := capt.stop(t, plain)

		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("the marker of the mesh requests is on the node-to-node link in plaintext")
		}
		if !bytes.Contains(raw, []byte(plain)) {
			t.Fatalf("positive control: legacy plaintext marker not in the capture (%d packets): the capture does not work", len(pkts))
		}
		var hbone, appData, handshake int
		for _, p := range pkts {
			for _, server := range []string{"server-b", "victim"} {
				if p.src.Addr() == ip["client"] && p.dst.Addr() == ip[server] && p.dst.Port() != 15008 {
					t.Errorf("client reached %s other than by HBONE: %v", server, p)
				}
			}
			if p.dst.Port() == 15008 || p.src.Port() == 15008 {
				hbone++
				if tlsRecordStart(p.payload, 0x17) {
					appData++
				}
				if tlsRecordStart(p.payload, 0x16) {
					handshake++
				}
			}
		}
		if hbone == 0 || appData == 0 || handshake == 0 {
			t.Errorf("capture: %d packets to or from :15008, %d starting a TLS application-data record, %d a TLS handshake record (want > 0 each)", hbone, appData, handshake)
		}
		t.Logf("capture: %d packets, %d on :15008, %d TLS application-data and %d handshake records starting a segment", len(pkts), hbone, appData, handshake)
	})

	t.Run("enrolled and not enrolled", func(t *testing.T) {
		m := m.in(t)
		// Enrolled -> not enrolled: passthrough, the server sees the client.
		out := m.mustCall(t, converge, "demo/client", "http", addr("legacy", 8080), newMarker("pass"), 2)
		if got := peerOf(out); got != ip["client"] {
			t.Errorf("legacy saw peer %v, want the client %v (passthrough): %s", got, ip["client"], out)
		}
		// Not enrolled -> enrolled: plaintext allowed (PERMISSIVE).
		m.mustCall(t, converge, "legacy/legacy", "http", addr("server-a", 8080), newMarker("perm"), 2)

		strict := writeFile(t, "strict.yaml", `
policies:
  - apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: strict, namespace: demo}
    spec: {mtls: {mode: STRICT}}
`)
		start := time.Now()
		m.must("apply", "-f", strict)
		deleted := false
		t.Cleanup(func() {
			if !deleted {
				m.must("delete", "-f", strict)
			}
		})
		// node-a's ztunnel refuses legacy's plaintext to server-a, on
		// every port, and counts it.
		plainDenials := ztunnelDenials("node-a", map[string]string{
			"reporter": "destination", "connection_security_policy": "none",
			"source_workload": "legacy", "destination_workload": "server-a",
		})
		r := meshcheck.ExpectDenied(t, meshcheck.Denial{
			What: "legacy/legacy -> server-a:8080 (http) under STRICT", Call: podCaller("legacy/legacy", "http", addr("server-a", 8080)),
			Denials: plainDenials, Start: start, Within: converge,
		})
		t.Logf("plaintext reset by node-a's ztunnel %v after STRICT was applied, and stays so", r.First.Round(time.Millisecond))
		meshcheck.ExpectDenied(t, meshcheck.Denial{
			What: "legacy/legacy -> server-a:9000 (tcp) under STRICT", Call: podCaller("legacy/legacy", "tcp", addr("server-a", 9000)),
			Denials: plainDenials, Start: time.Now(), Within: converge,
		})
		// Positive control: mTLS is still allowed.
		m.mustCall(t, converge, "demo/client", "http", addr("server-b", 8080), newMarker("mtls"), 2)
		m.mustCall(t, converge, "demo/client", "http", addr("server-a", 8080), newMarker("mtls"), 2)

		m.must("delete", "-f", strict)
		deleted = true
		m.mustCall(t, converge, "legacy/legacy", "http", addr("server-a", 8080), newMarker("perm"), 2)
	})

	t.Run("AUDIT policy logs and does not enforce", func(t *testing.T) {
		m := m.in(t)
		audit := writeFile(t, "audit.yaml", `
policies:
  - apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: audit-client, namespace: demo}
    spec:
      action: AUDIT
      selector: {matchLabels: {app: echo-b}}
      rules:
        - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
`)
		m.must("apply", "-f", audit)
		deleted := false
		t.Cleanup(func() {
			if !deleted {
				m.must("delete", "-f", audit)
			}
		})
		logPath := filepath.Join(m.state, "logs", "ztunnel-node-b.log")
		eventually(t, "audit line in ztunnel-node-b.log", converge, func() error {
			// The request is allowed: AUDIT never enforces.
			m.mustCall(t, converge, "demo/client", "http", addr("server-b", 8080), newMarker("audit"), 1)
			logs, err := os.ReadFile(logPath)
			if err != nil {
				return err
			}
			if !hasLogLine(string(logs), "audit: policies matched", "demo/audit-client", "src_identity="+clientID) {
				return fmt.Errorf("no audit line for demo/audit-client from %s yet", clientID)
			}
			return nil
		})
		m.must("delete", "-f", audit)
		deleted = true
	})

	t.Run("fail closed", func(t *testing.T) {
		m := m.in(t)
		t.Run("ztunnel stopped", func(t *testing.T) {
			m := m.in(t)
			client := m.podIdentity(t, "demo", "client")
			t.Cleanup(func() { m.must("start", "ztunnel-node-a") })
			secret, plain := newMarker("closed"), newMarker("plain")
			// cni0 is the node side of every pod veth on node-a.
			capt := startCapture(t, "ambitl-node-node-a", "cni0")
			m.must("stop", "ztunnel-node-a")
			if s := m.status(); !stopped(s, "ztunnel-node-a") {
				t.Errorf("status does not show ztunnel-node-a stopped: %+v", s.Processes)
			}
			for _, c := range []struct{ proto, addr string }{
				{"http", addr("server-b", 8080)}, {"tcp", addr("server-b", 9000)}, {"http", addr("server-a", 8080)},
			} {
				// Refused at once inside the pod (the capture redirects to
				// ztunnel's closed port), not a timeout.
				if out, err := m.call("demo/client", c.proto, c.addr, secret, 1); err == nil {
					t.Errorf("client -> %s answered with its node's ztunnel stopped: %s", c.addr, out)
				} else if !strings.Contains(err.Error(), "connection refused") {
					t.Errorf("client -> %s with its node's ztunnel stopped: %v; want the connect refused", c.addr, err)
				}
			}
			m.mustCall(t, converge, "legacy/legacy-a", "http", addr("legacy", 8080), plain, 1)
			pkts, raw := capt.stop(t, plain)
			if !bytes.Contains(raw, []byte(plain)) {
				t.Fatalf("positive control: legacy marker not in the cni0 capture (%d packets)", len(pkts))
			}
			if bytes.Contains(raw, []byte(secret)) {
				t.Errorf("the enrolled client's marker left the pod in plaintext with ztunnel stopped")
			}
			for _, p := range pkts {
				if p.src.Addr() == ip["client"] && p.synNotAcking {
					t.Errorf("the enrolled client sent a SYN out of its pod with ztunnel stopped: %v", p)
				}
			}

			m.must("start", "ztunnel-node-a")
			start := time.Now()
			m.mustCall(t, converge, "demo/client", "http", addr("server-b", 8080), newMarker("back"), 2)
			m.mustCall(t, converge, "demo/client", "http", addr("server-a", 8080), newMarker("back"), 2)
			t.Logf("traffic back %s after ztunnel-node-a started", time.Since(start).Round(time.Millisecond))
			if got := m.podIdentity(t, "demo", "client"); got != client {
				t.Errorf("client pod changed across the ztunnel restart: %+v -> %+v", client, got)
			}
		})

		t.Run("cni-agent stopped", func(t *testing.T) {
			m := m.in(t)
			serverB := m.podIdentity(t, "demo", "server-b")
			late := writeFile(t, "late.yaml", `
pods:
  - {name: late, namespace: demo, node: node-b, serviceAccount: server, labels: {app: late}, run: ["ambit-echo", "server", "-name", "{{name}}"]}
`)
			t.Cleanup(func() {
				m.must("start", "cni-agent-node-b")
				m.must("delete", "-f", late)
			})
			m.must("stop", "cni-agent-node-b")
			out, err := m.run("apply", "-f", late)
			if err == nil {
				t.Fatalf("apply of an enrolled pod with the node's agent stopped succeeded:\n%s", out)
			}
			for _, want := range []string{"pod demo/late", "CNI ADD failed", "agent", "unreachable", "cni-agent-node-b.log"} {
				if !strings.Contains(out, want) {
					t.Errorf("apply error lacks %q:\n%s", want, out)
				}
			}
			if p, _ := m.status().pod("demo/late"); p.IP != "" || p.Running {
				t.Errorf("late after a failed CNI ADD: %+v", p)
			}
			if _, err := os.Stat("/var/run/netns/ambitl-pod-demo-late"); err == nil {
				t.Errorf("the netns of a pod whose CNI ADD failed is left")
			}
			// The data path does not need the agent.
			m.mustCall(t, converge, "demo/client", "http", addr("server-b", 8080), newMarker("noagent"), 2)

			m.must("start", "cni-agent-node-b")
			out = m.must("apply", "-f", late)
			if !strings.Contains(out, "pod demo/late 10.244.1.") || !strings.Contains(out, "enrolled, captured") {
				t.Errorf("re-apply after the agent started:\n%s", out)
			}
			p, _ := m.status().pod("demo/late")
			lateIP, _ := netip.ParseAddr(p.IP)
			out = m.mustCall(t, converge, "demo/client", "http", netip.AddrPortFrom(lateIP, 8080).String(), newMarker("late"), 2)
			if got := peerOf(out); got != lateIP {
				t.Errorf("late saw peer %v, want its own address (mesh path): %s", got, out)
			}
			if got := m.podIdentity(t, "demo", "server-b"); got != serverB {
				t.Errorf("server-b changed across the agent restart: %+v -> %+v", serverB, got)
			}
		})
	})

	t.Run("un-enroll a running pod", func(t *testing.T) {
		m := m.in(t)
		victim := m.podIdentity(t, "demo", "victim")
		out := m.mustCall(t, converge, "demo/client", "http", addr("victim", 8080), newMarker("in"), 1)
		if got := peerOf(out); got != ip["victim"] {
			t.Fatalf("victim enrolled: peer %v, want its own address: %s", got, out)
		}
		if ok, err := ztunnelPodListeners("node-b", uid["victim"]); !ok || err != nil {
			t.Fatalf("ztunnel-node-b has no listeners for the enrolled victim (%v)", err)
		}
		const spec = `
pods:
  - {name: victim, namespace: demo, node: node-b, serviceAccount: victim, labels: {app: victim%s}, run: ["ambit-echo", "server", "-name", "{{name}}"]}
`
		out = m.must("apply", "-f", writeFile(t, "out.yaml", fmt.Sprintf(spec, ", istio.io/dataplane-mode: none")))
		if !strings.Contains(out, "0 pods added, 0 removed") {
			t.Errorf("a label change restarted the pod:\n%s", out)
		}
		t.Cleanup(func() {
			m.must("apply", "-f", writeFile(t, "in.yaml", fmt.Sprintf(spec, "")))
			eventually(t, "victim enrolled again", converge, func() error {
				if p, _ := m.status().pod("demo/victim"); !p.Captured {
					return fmt.Errorf("victim: %+v", p)
				}
				out, err := m.call("demo/client", "http", addr("victim", 8080), newMarker("in"), 1)
				if err != nil {
					return err
				}
				if got := peerOf(out); got != ip["victim"] {
					return fmt.Errorf("victim re-enrolled: peer %v, want its own address", got)
				}
				return nil
			})
		})
		eventually(t, "capture and listeners removed", converge, func() error {
			if p, _ := m.status().pod("demo/victim"); p.Enrolled || p.Captured {
				return fmt.Errorf("status: %+v", p)
			}
			tables, err := inNetns("ambitl-pod-demo-victim", "nft", "list", "tables")
			if err != nil {
				return fmt.Errorf("nft list tables: %v: %s", err, tables)
			}
			if strings.Contains(tables, "ambit") {
				return fmt.Errorf("victim's netns still has %q", strings.TrimSpace(tables))
			}
			if ok, err := ztunnelPodListeners("node-b", uid["victim"]); ok || err != nil {
				return fmt.Errorf("ztunnel-node-b still has listeners for victim (%v)", err)
			}
			return nil
		})
		eventually(t, "client reaches victim directly", converge, func() error {
			out, err := m.call("demo/client", "http", addr("victim", 8080), newMarker("direct"), 1)
			if err != nil {
				return err
			}
			if got := peerOf(out); got != ip["client"] {
				return fmt.Errorf("victim saw peer %v, want the client's own %v (direct)", got, ip["client"])
			}
			return nil
		})
		before := inboundOpened(t, "node-b", clientID, "victim")
		out = m.mustCall(t, converge, "demo/client", "tcp", addr("victim", 9000), newMarker("direct"), 3)
		if got := peerOf(out); got != ip["client"] {
			t.Errorf("victim saw peer %v, want the client %v: %s", got, ip["client"], out)
		}
		if after := inboundOpened(t, "node-b", clientID, "victim"); after != before {
			t.Errorf("ztunnel-node-b counted inbound connections to the un-enrolled victim: %v -> %v", before, after)
		}
		if got := m.podIdentity(t, "demo", "victim"); got != victim {
			t.Errorf("victim changed when un-enrolled: %+v -> %+v", victim, got)
		}
	})

	t.Run("istiod restart", func(t *testing.T) {
		m := m.in(t)
		t.Cleanup(func() { m.must("start", "istiod") })
		before := map[string]string{}
		for _, node := range []string{"node-a", "node-b"} {
			before[node] = ztunnelWorkloads(t, node)
		}
		m.must("stop", "istiod")
		if s := m.status(); !stopped(s, "istiod") {
			t.Errorf("status does not show istiod stopped: %+v", s.Processes)
		}
		// The ztunnels keep their last state and traffic keeps flowing
		// (certificates are cached; xDS streams retry in the background).
		m.mustCall(t, converge, "demo/client", "http", addr("server-b", 8080), newMarker("noistiod"), 2)
		m.mustCall(t, converge, "demo/client", "tcp", addr("server-a", 9000), newMarker("noistiod"), 1)
		for node, was := range before {
			if now := ztunnelWorkloads(t, node); now != was {
				t.Errorf("ztunnel-%s changed its workloads with istiod stopped:\n%s\n->\n%s", node, was, now)
			}
		}

		out := m.must("start", "istiod")
		if !strings.Contains(out, "started istiod") {
			t.Errorf("start output: %s", out)
		}
		m.mustCall(t, converge, "demo/client", "http", addr("server-b", 8080), newMarker("istiod-back"), 2)
		// A change made after the restart reaches every ztunnel through the
		// new xDS streams: a DENY policy, then its removal.
		deny := writeFile(t, "deny.yaml", `
policies:
  - apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-client-9000, namespace: demo}
    spec:
      selector: {matchLabels: {app: echo-b}}
      action: DENY
      rules:
        - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
          to: [{operation: {ports: ["9000"]}}]
`)
		start := time.Now()
		m.must("apply", "-f", deny)
		deleted := false
		t.Cleanup(func() {
			if !deleted {
				m.must("delete", "-f", deny)
			}
		})
		r := meshcheck.ExpectDenied(t, meshcheck.Denial{
			What: "demo/client -> server-b:9000 (tcp) after the istiod restart", Call: podCaller("demo/client", "tcp", addr("server-b", 9000)),
			Denials: ztunnelDenials("node-b", map[string]string{
				"reporter": "destination", "source_principal": clientID, "destination_workload": "server-b",
			}),
			Start: start, Within: converge,
		})
		t.Logf("reset by node-b's ztunnel %v after the DENY policy was applied; %d calls over %v all reset and counted DENY",
			r.First.Round(time.Millisecond), r.Refused, meshcheck.LastingOver)
		// Positive control: the port the policy does not name is allowed.
		m.mustCall(t, converge, "demo/client", "http", addr("server-b", 8080), newMarker("allowed"), 1)
		m.must("delete", "-f", deny)
		deleted = true
		m.mustCall(t, converge, "demo/client", "tcp", addr("server-b", 9000), newMarker("allowed"), 1)
	})

	t.Run("ztunnel restart", func(t *testing.T) {
		m := m.in(t)
		serverB := m.podIdentity(t, "demo", "server-b")
		t.Cleanup(func() { m.must("start", "ztunnel-node-b") })
		pid := m.status().procPID("ztunnel-node-b")
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, "ztunnel-node-b dead", 5*time.Second, func() error {
			for _, p := range m.status().Processes {
				if p.Name == "ztunnel-node-b" && p.Alive {
					return fmt.Errorf("still alive")
				}
			}
			return nil
		})
		// node-a's ztunnel cannot reach server-b's HBONE port and resets
		// the client's connection: a refusal, not a timeout.
		if out, err := m.call("demo/client", "http", addr("server-b", 8080), newMarker("down"), 1); err == nil {
			t.Errorf("client -> server-b answered with server-b's ztunnel killed: %s", out)
		} else if !strings.Contains(err.Error(), "connection reset by peer") {
			t.Errorf("client -> server-b with server-b's ztunnel killed: %v; want the connection reset by node-a's ztunnel", err)
		}
		start := time.Now()
		out := m.must("start", "ztunnel-node-b")
		if !strings.Contains(out, "started ztunnel-node-b") {
			t.Errorf("start output: %s", out)
		}
		eventually(t, "listeners recreated", converge, func() error {
			for _, pod := range []string{"server-b", "victim"} {
				if ok, err := ztunnelPodListeners("node-b", uid[pod]); !ok || err != nil {
					return fmt.Errorf("no listeners for %s yet (%v)", pod, err)
				}
			}
			return nil
		})
		before := inboundOpened(t, "node-b", clientID, "server-b")
		m.mustCall(t, converge, "demo/client", "http", addr("server-b", 8080), newMarker("back"), 2)
		t.Logf("traffic back %s after ztunnel-node-b started", time.Since(start).Round(time.Millisecond))
		eventually(t, "new ztunnel reports the client identity", 5*time.Second, func() error {
			if after := inboundOpened(t, "node-b", clientID, "server-b"); after < before+2 {
				return fmt.Errorf("connections opened %v -> %v", before, after)
			}
			return nil
		})
		if got := m.podIdentity(t, "demo", "server-b"); got != serverB {
			t.Errorf("server-b changed across the ztunnel restart: %+v -> %+v", serverB, got)
		}
	})
}

// hasLogLine reports whether one line of logs holds every part.
func hasLogLine(logs string, parts ...string) bool {
	for _, line := range strings.Split(logs, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return true
		}
	}
	return false
}

func stopped(s status, name string) bool {
	for _, p := range s.Processes {
		if p.Name == name {
			return p.Stopped && !p.Alive
		}
	}
	return false
}

// ztunnelWorkloads returns the workloads section of a node's ztunnel
// config dump.
func ztunnelWorkloads(t *testing.T, node string) string {
	t.Helper()
	dump, err := nodeGet(node, 15000, "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Workloads json.RawMessage `json:"workloads"`
	}
	if err := json.Unmarshal([]byte(dump), &d); err != nil {
		t.Fatalf("ztunnel-%s config_dump: %v", node, err)
	}
	if len(d.Workloads) < 10 {
		t.Fatalf("ztunnel-%s has no workloads: %s", node, d.Workloads)
	}
	return string(d.Workloads)
}
