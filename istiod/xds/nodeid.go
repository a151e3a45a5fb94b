package xds

import (
	"fmt"
	"net/netip"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Istio's proxy types, the first part of a node ID.
const (
	NodeTypeSidecar  = "sidecar"
	NodeTypeRouter   = "router"
	NodeTypeWaypoint = "waypoint"
	NodeTypeZtunnel  = "ztunnel"
)

// MetadataNodeName is the node metadata key holding the name of the
// Kubernetes node a proxy runs on (Istio's NODE_NAME).
const MetadataNodeName = "NODE_NAME"

// NodeID is an Istio xDS node ID, "<type>~<ip>~<pod>.<namespace>~<domain>"
// (e.g. "ztunnel~10.1.0.7~ztunnel-x2d4.istio-system~istio-system.svc.cluster.local").
type NodeID struct {
	Type      string
	IP        netip.Addr
	Pod       string
	Namespace string
	Domain    string
}

// ParseNodeID parses an Istio node ID: four '~'-separated parts, a known
// type, a valid IP, and "<pod>.<namespace>" with both non-empty, as Istio's
// istiod requires.
func ParseNodeID(id string) (NodeID, error) {
	parts := strings.Split(id, "~")
	if len(parts) != 4 {
		return NodeID{}, fmt.Errorf("node ID %q has %d '~'-separated parts, want 4: <type>~<ip>~<pod>.<namespace>~<domain>", id, len(parts))
	}
	var n NodeID
	switch parts[0] {
	case NodeTypeSidecar, NodeTypeRouter, NodeTypeWaypoint, NodeTypeZtunnel:
		n.Type = parts[0]
	default:
		return NodeID{}, fmt.Errorf("node ID %q: type %q is none of %s, %s, %s, %s", id, parts[0], NodeTypeSidecar, NodeTypeRouter, NodeTypeWaypoint, NodeTypeZtunnel)
	}
	ip, err := netip.ParseAddr(parts[1])
	if err != nil {
		return NodeID{}, fmt.Errorf("node ID %q: %q is not an IP address", id, parts[1])
	}
	n.IP = ip
	pod, ns, ok := strings.Cut(parts[2], ".")
	if !ok || pod == "" || ns == "" {
		return NodeID{}, fmt.Errorf("node ID %q: %q is not <pod>.<namespace>", id, parts[2])
	}
	n.Pod, n.Namespace, n.Domain = pod, ns, parts[3]
	return n, nil
}

// CheckZtunnelNode returns nil when n names a ztunnel of the Kubernetes
// node called node: an Istio node ID of type ztunnel whose metadata
// NODE_NAME is node (the node Istio's istiod attributes the stream to).
// The error says which part does not match.
func CheckZtunnelNode(n *core.Node, node string) error {
	if n == nil || n.GetId() == "" {
		return fmt.Errorf("the stream's first request carries no node; send the ztunnel's node ID and metadata (%s=%s)", MetadataNodeName, node)
	}
	id, err := ParseNodeID(n.GetId())
	if err != nil {
		return err
	}
	if id.Type != NodeTypeZtunnel {
		return fmt.Errorf("node ID %q is a %s, not a ztunnel", n.GetId(), id.Type)
	}
	got := n.GetMetadata().GetFields()[MetadataNodeName].GetStringValue()
	if got != node {
		if got == "" {
			return fmt.Errorf("node ID %q has no %s metadata; want %s=%s", n.GetId(), MetadataNodeName, MetadataNodeName, node)
		}
		return fmt.Errorf("node ID %q is on node %q (metadata %s), not %q", n.GetId(), got, MetadataNodeName, node)
	}
	return nil
}
