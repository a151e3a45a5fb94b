package route

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/policy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// HBONEPort is where every HBONE server listens.
const HBONEPort = 15008

// View is what routing reads from the state.
type View interface {
	WorkloadByAddr(network string, ip netip.Addr) *workloadapi.Workload
	ServiceByAddr(network string, ip netip.Addr) *workloadapi.Service
	Endpoints(namespace, hostname string) []*workloadapi.Workload
	PoliciesFor(w *workloadapi.Workload) []*security.Authorization
}

var _ View = (*state.View)(nil)

// Sentinel errors; returned errors wrap them and name the subject.
var (
	ErrUnknownSource      = errors.New("unknown source workload")
	ErrNoServicePort      = errors.New("service has no such port")
	ErrNoHealthyEndpoints = errors.New("no healthy endpoints")
	ErrUnknownDestination = errors.New("no workload at destination address")
	ErrNotLocal           = errors.New("destination workload is not on this node")
)

// Kind says how to reach the destination.
type Kind int

const (
	// Passthrough: connect to Target in plaintext.
	Passthrough Kind = iota + 1
	// HBONE: open an HBONE tunnel to Target for Authority, verifying the
	// peer as DestIdentity.
	HBONE
	// Waypoint: the destination has a waypoint (Decision.Waypoint); not
	// implemented yet.
	Waypoint
)

func (k Kind) String() string {
	switch k {
	case Passthrough:
		return "passthrough"
	case HBONE:
		return "hbone"
	case Waypoint:
		return "waypoint"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Decision is the outcome of Outbound.
type Decision struct {
	Kind Kind
	// Target is the address to connect to: <pod IP>:15008 for HBONE, the
	// endpoint or original address for Passthrough, the waypoint's
	// address and HBONE port for Waypoint (zero when the waypoint is given
	// by hostname).
	Target netip.AddrPort
	// Authority is the HBONE :authority: the workload's <IP>:<target port>
	// for HBONE, the original destination for Waypoint.
	Authority      netip.AddrPort
	SourceIdentity spiffe.ID
	// DestIdentity is the identity to verify (HBONE only).
	DestIdentity spiffe.ID
	// Workload is the destination workload, nil when unknown or Waypoint.
	Workload *workloadapi.Workload
	// Service is set when the destination was a service address.
	Service *workloadapi.Service
	// Waypoint is set for Kind Waypoint.
	Waypoint *workloadapi.GatewayAddress
}

// Picker chooses one of n (n > 0) endpoints and returns its index. nil
// means uniformly at random.
type Picker func(n int) int

// Outbound decides how to carry a connection from src to dst.
func Outbound(v View, src *workloadapi.Workload, dst netip.AddrPort, pick Picker) (Decision, error) {
	if src == nil {
		return Decision{}, fmt.Errorf("%w: the connection to %s was captured from an address ztunnel has no workload for", ErrUnknownSource, dst)
	}
	srcID := state.Identity(src)
	ip := dst.Addr().Unmap()
	dst = netip.AddrPortFrom(ip, dst.Port())
	network := src.GetNetwork()

	if svc := v.ServiceByAddr(network, ip); svc != nil {
		if wp := svc.GetWaypoint(); wp != nil && !isGateway(src, wp) {
			return waypoint(wp, dst, srcID, svc), nil
		}
		return toService(v, src, srcID, svc, dst, pick)
	}
	if w := v.WorkloadByAddr(network, ip); w != nil {
		if wp := w.GetWaypoint(); wp != nil && !isGateway(src, wp) {
			return waypoint(wp, dst, srcID, nil), nil
		}
		return toWorkload(w, dst, srcID, nil), nil
	}
	return Decision{Kind: Passthrough, Target: dst, SourceIdentity: srcID}, nil
}

func toService(v View, src *workloadapi.Workload, srcID spiffe.ID, svc *workloadapi.Service, dst netip.AddrPort, pick Picker) (Decision, error) {
	key := state.ServiceKey(svc)
	var svcPort *workloadapi.Port
	for _, p := range svc.GetPorts() {
		if p.GetServicePort() == uint32(dst.Port()) {
			svcPort = p
			break
		}
	}
	if svcPort == nil {
		return Decision{}, fmt.Errorf("%w: service %s has no port %d", ErrNoServicePort, key, dst.Port())
	}
	if svc.GetLoadBalancing().GetMode() == workloadapi.LoadBalancing_PASSTHROUGH {
		return Decision{Kind: Passthrough, Target: dst, SourceIdentity: srcID, Service: svc}, nil
	}
	allowAll := svc.GetLoadBalancing().GetHealthPolicy() == workloadapi.LoadBalancing_ALLOW_ALL
	type candidate struct {
		w    *workloadapi.Workload
		addr netip.AddrPort
	}
	var cands []candidate
	for _, w := range v.Endpoints(svc.GetNamespace(), svc.GetHostname()) {
		if w.GetStatus() != workloadapi.WorkloadStatus_HEALTHY && !allowAll {
			continue
		}
		if w.GetNetwork() != src.GetNetwork() {
			continue // other networks need the east-west gateway (not yet)
		}
		ip, ok := pickAddr(w, dst.Addr())
		if !ok {
			continue
		}
		port, ok := targetPort(w.GetServices()[key], svcPort)
		if !ok {
			continue
		}
		cands = append(cands, candidate{w, netip.AddrPortFrom(ip, port)})
	}
	if len(cands) == 0 {
		return Decision{}, fmt.Errorf("%w for service %s port %d", ErrNoHealthyEndpoints, key, dst.Port())
	}
	i := 0
	if len(cands) > 1 {
		if pick == nil {
			pick = rand.IntN
		}
		i = pick(len(cands))
		if i < 0 || i >= len(cands) {
			i = ((i % len(cands)) + len(cands)) % len(cands)
		}
	}
	c := cands[i]
	return toWorkload(c.w, c.addr, srcID, svc), nil
}

// targetPort maps a service port to an endpoint's port: the endpoint's own
// mapping when it lists ports (an endpoint listing ports without this one
// does not serve it), else the service's target_port, else the port itself.
func targetPort(pl *workloadapi.PortList, sp *workloadapi.Port) (uint16, bool) {
	if ports := pl.GetPorts(); len(ports) > 0 {
		found := false
		for _, p := range ports {
			if p.GetServicePort() == sp.GetServicePort() {
				if p.GetTargetPort() != 0 {
					return uint16(p.GetTargetPort()), true
				}
				found = true
				break
			}
		}
		if !found {
			return 0, false
		}
	}
	if sp.GetTargetPort() != 0 {
		return uint16(sp.GetTargetPort()), true
	}
	return uint16(sp.GetServicePort()), true
}

// pickAddr returns w's first address of like's family, else its first.
func pickAddr(w *workloadapi.Workload, like netip.Addr) (netip.Addr, bool) {
	var first netip.Addr
	for _, b := range w.GetAddresses() {
		ip, ok := netip.AddrFromSlice(b)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.Is4() == like.Is4() {
			return ip, true
		}
		if !first.IsValid() {
			first = ip
		}
	}
	return first, first.IsValid()
}

func toWorkload(w *workloadapi.Workload, addr netip.AddrPort, srcID spiffe.ID, svc *workloadapi.Service) Decision {
	if w.GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE {
		return Decision{
			Kind:           HBONE,
			Target:         netip.AddrPortFrom(addr.Addr(), HBONEPort),
			Authority:      addr,
			SourceIdentity: srcID,
			DestIdentity:   state.Identity(w),
			Workload:       w,
			Service:        svc,
		}
	}
	return Decision{Kind: Passthrough, Target: addr, SourceIdentity: srcID, Workload: w, Service: svc}
}

func waypoint(wp *workloadapi.GatewayAddress, dst netip.AddrPort, srcID spiffe.ID, svc *workloadapi.Service) Decision {
	d := Decision{Kind: Waypoint, Authority: dst, SourceIdentity: srcID, Service: svc, Waypoint: wp}
	if ip, ok := netip.AddrFromSlice(wp.GetAddress().GetAddress()); ok {
		port := uint16(wp.GetHboneMtlsPort())
		if port == 0 {
			port = HBONEPort
		}
		d.Target = netip.AddrPortFrom(ip.Unmap(), port)
	}
	return d
}

// isGateway reports whether w is the gateway wp (so its traffic must not
// loop back to it): by address, or by a service it backs.
func isGateway(w *workloadapi.Workload, wp *workloadapi.GatewayAddress) bool {
	if h := wp.GetHostname(); h != nil {
		_, ok := w.GetServices()[h.GetNamespace()+"/"+h.GetHostname()]
		return ok
	}
	gw, ok := netip.AddrFromSlice(wp.GetAddress().GetAddress())
	if !ok || wp.GetAddress().GetNetwork() != w.GetNetwork() {
		return false
	}
	for _, b := range w.GetAddresses() {
		if ip, ok := netip.AddrFromSlice(b); ok && ip.Unmap() == gw.Unmap() {
			return true
		}
	}
	return false
}

// InboundConn describes a connection arriving for a local workload.
type InboundConn struct {
	// Node is this ztunnel's node; "" skips the locality check.
	Node    string
	Network string
	DstIP   netip.Addr
	DstPort uint16
	// Peer is the verified peer identity; nil for plaintext.
	Peer  *spiffe.ID
	SrcIP netip.Addr
}

// InboundDecision is the outcome of Inbound: the destination workload and
// the policy verdict (Allow, Reason for logs, Matched, Audits).
type InboundDecision struct {
	Workload *workloadapi.Workload
	policy.Result
}

// Inbound finds the local destination workload and authorizes the
// connection against the policies that apply to it. An error means the
// destination is not served here (HBONE answers 4xx); a denial is not an
// error.
func Inbound(v View, c InboundConn) (InboundDecision, error) {
	dst := c.DstIP.Unmap()
	w := v.WorkloadByAddr(c.Network, dst)
	if w == nil {
		return InboundDecision{}, fmt.Errorf("%w: %s on network %q", ErrUnknownDestination, dst, c.Network)
	}
	if c.Node != "" && w.GetNode() != c.Node {
		return InboundDecision{}, fmt.Errorf("%w: workload %s (%s) runs on node %q, this is %q", ErrNotLocal, w.GetUid(), dst, w.GetNode(), c.Node)
	}
	res := policy.Evaluate(v.PoliciesFor(w), policy.Conn{
		SourceIdentity: c.Peer,
		SourceIP:       c.SrcIP,
		DestIP:         dst,
		DestPort:       c.DstPort,
	})
	return InboundDecision{Workload: w, Result: res}, nil
}
