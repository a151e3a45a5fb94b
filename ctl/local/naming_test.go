package local

import (
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/ctl/local/topology"
)

func TestNames(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{NodeNetns("node-a"), "ambitl-node-node-a"},
		{PodNetns("demo", "client"), "ambitl-pod-demo-client"},
		{NodeIP(0).String(), "172.30.0.10"},
		{NodeIP(15).String(), "172.30.0.25"},
		{PodCIDR(0).String(), "10.244.0.0/24"},
		{PodCIDR(3).String(), "10.244.3.0/24"},
		{PodGateway(1).String(), "10.244.1.1"},
		{IstiodAddr(), "172.30.0.1:15012"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
	}
	long := PodNetns(strings.Repeat("n", 40), strings.Repeat("p", 40))
	if !regexp.MustCompile(`^ambitl-pod-h[0-9a-f]{16}$`).MatchString(long) {
		t.Errorf("long pod netns name %q", long)
	}
	if long == PodNetns(strings.Repeat("n", 40), strings.Repeat("p", 41)) {
		t.Error("different long pods share a netns name")
	}
	for _, n := range []string{NodeNetns("x"), PodNetns("a", "b"), long, BackboneNetns} {
		if !strings.HasPrefix(n, NetnsPrefix) || len(n) > 63 {
			t.Errorf("%q: want prefix %s and at most 63 characters", n, NetnsPrefix)
		}
	}
}

func TestCheckNamesCollision(t *testing.T) {
	topo, err := topology.Parse([]byte(`
nodes: [{name: n}]
namespaces: [{name: a-b}, {name: a}]
pods: [{name: c, namespace: a-b, node: n}, {name: b-c, namespace: a, node: n}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkNames(topo); !errors.Is(err, topology.ErrInvalid) || !strings.Contains(err.Error(), "ambitl-pod-a-b-c") {
		t.Fatalf("err = %v", err)
	}
}

func TestConflist(t *testing.T) {
	b := Conflist(2, "/s/nodes/n/ipam")
	golden(t, "conflist-node2.json", b)
	var doc struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []struct {
			Type string `json:"type"`
			IPAM struct {
				Ranges [][]struct{ Subnet, Gateway string } `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Name != NetworkName || doc.Plugins[0].Type != "bridge" || doc.Plugins[0].IPAM.Ranges[0][0].Subnet != "10.244.2.0/24" || doc.Plugins[0].IPAM.Ranges[0][0].Gateway != "10.244.2.1" {
		t.Errorf("conflist %+v", doc)
	}
}

// The plugins version must be the one go.mod pins.
func TestCNIPluginsVersionPinned(t *testing.T) {
	b, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	want := "github.com/containernetworking/plugins " + CNIPluginsVersion
	if !strings.Contains(string(b), want) {
		t.Errorf("go.mod does not pin %q: update CNIPluginsVersion", want)
	}
}

func TestMergeRemove(t *testing.T) {
	cur, err := topology.Load("../../deploy/examples/local/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	frag, err := topology.ParseFragment([]byte(`
namespaces: [{name: legacy, labels: {istio.io/dataplane-mode: ambient}}]
pods: [{name: extra, namespace: demo, node: node-b}, {name: client, namespace: demo, node: node-b}]
policies: [{kind: PeerAuthentication, metadata: {name: strict, namespace: demo}, spec: {mtls: {mode: STRICT}}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	m, err := Merge(cur, frag)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(m.Pods) != 5 || len(m.Policies) != 1 || !m.Enrolled(topology.Pod{Namespace: "legacy"}) {
		t.Errorf("merged: %d pods, %d policies", len(m.Pods), len(m.Policies))
	}
	for _, p := range m.Pods {
		if p.Key() == "demo/client" && (p.Node != "node-b" || p.ServiceAccount != "default") {
			t.Errorf("client not replaced: %+v", p)
		}
	}
	if len(cur.Pods) != 4 || cur.Namespace("legacy").Labels != nil {
		t.Error("Merge changed its input")
	}
	// Applying the same fragment twice changes nothing.
	m2, _ := Merge(m, frag)
	if len(m2.Pods) != len(m.Pods) || len(m2.Policies) != 1 {
		t.Error("Merge is not idempotent")
	}

	del, _ := topology.ParseFragment([]byte(`
namespaces: [{name: legacy}]
policies: [{kind: PeerAuthentication, metadata: {name: strict, namespace: demo}}]
pods: [{name: extra, namespace: demo}]
`))
	r, err := Remove(m, del)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(r.Pods) != 3 || len(r.Services) != 2 || len(r.Policies) != 0 || len(r.Namespaces) != 1 {
		t.Errorf("after remove: %d pods, %d services, %d policies, %d namespaces", len(r.Pods), len(r.Services), len(r.Policies), len(r.Namespaces))
	}

	if _, err := Merge(cur, &topology.Topology{Nodes: []topology.Node{{Name: "node-z"}}}); !errors.Is(err, topology.ErrInvalid) {
		t.Errorf("adding a node: %v", err)
	}
	if _, err := Merge(cur, &topology.Topology{TrustDomain: "other.td"}); !errors.Is(err, topology.ErrInvalid) {
		t.Errorf("changing the trust domain: %v", err)
	}
	if _, err := Remove(cur, &topology.Topology{Nodes: []topology.Node{{Name: "node-a"}}}); !errors.Is(err, topology.ErrInvalid) {
		t.Errorf("removing a node: %v", err)
	}
}

func TestRemoveStateDirRefusesForeignDir(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(dir+"/cluster.json", []byte("{}"), 0o644)
	os.WriteFile(dir+"/precious.txt", []byte("x"), 0o644)
	if err := removeStateDir(dir); err == nil || !strings.Contains(err.Error(), "precious.txt") {
		t.Fatalf("err = %v", err)
	}
	os.Remove(dir + "/precious.txt")
	if err := removeStateDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatal("state dir not removed")
	}
}
