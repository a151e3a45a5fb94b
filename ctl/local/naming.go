package local

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"

	"github.com/ambit-mesh/ambit/ctl/local/topology"
)

// Network namespace names. Every namespace local mode creates starts with
// NetnsPrefix, which is how down finds leftovers of a crashed run.
const (
	NetnsPrefix   = "ambitl-"
	BackboneNetns = NetnsPrefix + "net"
	// BackboneBridge joins the nodes inside BackboneNetns.
	BackboneBridge = "br0"
	// PodBridge is the bridge the CNI bridge plugin creates in each node.
	PodBridge = "cni0"
	// maxPodNetnsName bounds pod namespace names; longer ones are hashed.
	maxPodNetnsName = 63
)

// Addresses of the local mesh.
var (
	// BackboneIP is the backbone bridge's address; istiod listens there.
	BackboneIP     = netip.MustParseAddr("172.30.0.1")
	BackboneSubnet = netip.MustParsePrefix("172.30.0.0/24")
	// PodCIDRs is the range the node pod CIDRs (/24 each) come from.
	PodCIDRs = netip.MustParsePrefix("10.244.0.0/16")
)

// Ports of the local mesh's processes.
const (
	IstiodPort       = 15012
	IstiodReadyPort  = 8080
	ZtunnelAdminPort = 15000
	ZtunnelReadyPort = 15021
	ZtunnelStatsPort = 15020
	AgentHealthAddr  = "127.0.0.1:8000"
	ConflistName     = "10-ambit-local.conflist"
	NetworkName      = "ambit-local"
	PodIfName        = "eth0"
	NodeIfName       = "eth0"
	CNIVersion       = "1.1.0"
	RootNamespace    = "istio-system"
	DefaultCapture   = "auto"
)

// IstiodAddr is istiod's gRPC address on the backbone.
func IstiodAddr() string { return netip.AddrPortFrom(BackboneIP, IstiodPort).String() }

// IstiodReadinessAddr is where istiod answers /ready on the backbone.
func IstiodReadinessAddr() string { return netip.AddrPortFrom(BackboneIP, IstiodReadyPort).String() }

// NodeNetns is the network namespace of a node.
func NodeNetns(node string) string { return NetnsPrefix + "node-" + node }

// PodNetns is the network namespace of a pod: ambitl-pod-<ns>-<pod>, or
// ambitl-pod-h<hash> when that would be longer than 63 characters.
func PodNetns(namespace, pod string) string {
	n := NetnsPrefix + "pod-" + namespace + "-" + pod
	if len(n) <= maxPodNetnsName {
		return n
	}
	sum := sha256.Sum256([]byte(namespace + "/" + pod))
	return NetnsPrefix + "pod-h" + hex.EncodeToString(sum[:8])
}

// NodeIP is node i's address on the backbone: 172.30.0.(10+i).
func NodeIP(i int) netip.Addr {
	b := BackboneIP.As4()
	b[3] = byte(10 + i)
	return netip.AddrFrom4(b)
}

// PodCIDR is node i's pod range: 10.244.i.0/24.
func PodCIDR(i int) netip.Prefix {
	b := PodCIDRs.Addr().As4()
	b[2] = byte(i)
	return netip.PrefixFrom(netip.AddrFrom4(b), 24)
}

// PodGateway is node i's bridge address: 10.244.i.1.
func PodGateway(i int) netip.Addr { return PodCIDR(i).Addr().Next() }

// checkNames reports pods whose namespace names collide (ns "a-b" pod "c"
// and ns "a" pod "b-c" both give ambitl-pod-a-b-c) and node indexes beyond
// the address plan.
func checkNames(t *topology.Topology) error {
	if len(t.Nodes) > 200 {
		return fmt.Errorf("%w: %d nodes exceed the address plan", topology.ErrInvalid, len(t.Nodes))
	}
	seen := map[string]string{}
	for _, p := range t.Pods {
		n := PodNetns(p.Namespace, p.Name)
		if other, ok := seen[n]; ok {
			return fmt.Errorf("%w: pods %s and %s both map to network namespace %s; rename one", topology.ErrInvalid, other, p.Key(), n)
		}
		seen[n] = p.Key()
	}
	return nil
}
