package local

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ctl runs `ambitctl ARGS... --local --state-dir S` and returns stdout,
// failing the test on a non-zero exit.
func (m *mesh) ctl(args ...string) string {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ambitctl"), append(args, "--local", "--state-dir", m.state)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		m.t.Fatalf("ambitctl %s: %v\n%s%s", strings.Join(args, " "), err, out.Bytes(), errb.Bytes())
	}
	return out.String()
}

// TestAmbitctlZtunnelConfig reads the demo mesh's ztunnels with the
// inspection commands a cluster user has, in local mode.
func TestAmbitctlZtunnelConfig(t *testing.T) {
	requireBinaries(t)
	m := newMesh(t)
	m.must("up", "-f", demoFile)
	st := m.status()

	for _, node := range []string{"node-a", "node-b"} {
		out := m.ctl("ztunnel-config", "workloads", "--node", node)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if got := strings.Join(strings.Fields(lines[0]), " "); got != "NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL" {
			t.Errorf("%s: header %q", node, got)
		}
		rows := map[string][]string{}
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			if len(f) == 6 {
				rows[f[0]+"/"+f[1]] = f
			}
		}
		for _, p := range st.Pods {
			want := []string{p.Namespace, p.Name, p.IP, p.Node, "None", "TCP"}
			if p.Enrolled {
				want[5] = "HBONE"
			}
			if got := rows[p.Namespace+"/"+p.Name]; strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("ztunnel on %s: row of %s/%s = %q, want %q\n%s", node, p.Namespace, p.Name, got, want, out)
			}
		}
	}

	// Each -o json is the dump's own list.
	var services []struct{ Name, Namespace, Hostname string }
	if err := json.Unmarshal([]byte(m.ctl("ztunnel-config", "services", "-o", "json")), &services); err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, s := range services {
		names[s.Namespace+"/"+s.Name] = true
	}
	for _, want := range []string{"demo/echo-a", "demo/echo-b", "legacy/legacy"} {
		if !names[want] {
			t.Errorf("services -o json lacks %s: %+v", want, services)
		}
	}
	policy := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(policy, []byte(`policies:
  - apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: echo-b-from-client, namespace: demo}
    spec:
      selector: {matchLabels: {app: echo-b}}
      action: ALLOW
      rules:
        - from:
            - source: {principals: ["cluster.local/ns/demo/sa/client"]}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	m.must("apply", "-f", policy)
	var policies []struct{ Name, Namespace, Action, Scope string }
	if err := json.Unmarshal([]byte(m.ctl("ztunnel-config", "policies", "-o", "json")), &policies); err != nil {
		t.Fatal(err)
	}
	if len(policies) != 1 || policies[0].Name != "echo-b-from-client" || policies[0].Namespace != "demo" || policies[0].Scope != "WORKLOAD_SELECTOR" {
		t.Errorf("policies -o json = %+v, want demo/echo-b-from-client", policies)
	}
	if out := m.ctl("ztunnel-config", "policies"); !strings.Contains(out, "demo      echo-b-from-client Allow  WorkloadSelector") {
		t.Errorf("policies table:\n%s", out)
	}
	var certs []struct{ Identity, State string }
	if err := json.Unmarshal([]byte(m.ctl("ztunnel-config", "certificates", "--node", "node-b", "-o", "json")), &certs); err != nil {
		t.Fatal(err)
	}
	// node-b runs the enrolled demo/server-b (service account server).
	found := false
	for _, c := range certs {
		found = found || c.Identity == "spiffe://cluster.local/ns/demo/sa/server"
	}
	if !found {
		t.Errorf("node-b certificates lack demo/server: %+v", certs)
	}
	if out := m.ctl("ztunnel-config", "certificates", "--node", "node-b"); !strings.Contains(out, "spiffe://cluster.local/ns/demo/sa/server Leaf") {
		t.Errorf("certificates table:\n%s", out)
	}
	if out := m.ctl("ztunnel-config", "connections", "--node", "node-a"); !strings.Contains(out, "demo      client") {
		t.Errorf("connections table lacks demo/client:\n%s", out)
	}

	t.Run("proxy-status", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(binDir, "ambitctl"), "proxy-status", "--local", "--state-dir", m.state)
		out, err := cmd.CombinedOutput()
		if err != nil && strings.Contains(string(out), "status 404") {
			t.Skipf("this istiod does not serve /debug/syncz: %s", out)
		}
		if err != nil {
			t.Fatalf("proxy-status --local: %v\n%s", err, out)
		}
		for _, node := range []string{"node-a", "node-b"} {
			found := false
			for _, l := range strings.Split(string(out), "\n") {
				f := strings.Fields(l)
				found = found || (len(f) >= 5 && f[1] == node && f[2] == "ztunnel" && f[4] == "SYNCED")
			}
			if !found {
				t.Errorf("no SYNCED ztunnel row for %s:\n%s", node, out)
			}
		}
	})

	// An unknown node is named with the nodes there are.
	cmd := exec.Command(filepath.Join(binDir, "ambitctl"), "ztunnel-config", "workloads", "--local", "--state-dir", m.state, "--node", "node-z")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "node-a, node-b") {
		t.Errorf("unknown node: %v: %s", err, out)
	}
}
