package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/hbone"
	"github.com/ambit-mesh/ambit/ztunnel/route"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// Pod is an enrolled pod as the node agent describes it over ZDS.
type Pod struct {
	UID, Name, Namespace, ServiceAccount string
}

// String names the pod for logs and errors: namespace/name (uid).
func (p Pod) String() string { return fmt.Sprintf("%s/%s (%s)", p.Namespace, p.Name, p.UID) }

// Identity returns the pod's SPIFFE ID in trustDomain; an empty service
// account is Kubernetes' "default".
func (p Pod) Identity(trustDomain string) (spiffe.ID, error) {
	sa := p.ServiceAccount
	if sa == "" {
		sa = state.DefaultServiceAccount
	}
	id, err := spiffe.New(trustDomain, p.Namespace, sa)
	if err != nil {
		return spiffe.ID{}, fmt.Errorf("identity of pod %s: %w", p, err)
	}
	return id, nil
}

// Errors of the decisions.
var (
	// ErrNoWorkload: the state has no workload for the pod (yet).
	ErrNoWorkload = errors.New("pod has no workload in the state")
	// ErrNotPodAddress: an inbound connection is for an address that is not
	// one of this pod's.
	ErrNotPodAddress = errors.New("address is not one of the pod's")
	// ErrWaypoint: the destination needs a waypoint, which ztunnel cannot
	// route through yet.
	ErrWaypoint = errors.New("destination uses a waypoint; routing through waypoints is not implemented")
)

// Workloads is what the decisions read from the state.
type Workloads interface {
	route.View
	WorkloadByUID(uid string) *workloadapi.Workload
	Workloads() []*workloadapi.Workload
	ServiceByName(namespace, hostname string) *workloadapi.Service
}

var _ Workloads = (*state.View)(nil)

// PodWorkload finds pod's workload: by uid (the state's uid may be the pod
// uid), else by namespace and name (Istio names pods' workloads
// "<cluster>//Pod/<namespace>/<name>"). It returns nil when there is none.
func PodWorkload(v Workloads, pod Pod) *workloadapi.Workload {
	if w := v.WorkloadByUID(pod.UID); w != nil {
		return w
	}
	for _, w := range v.Workloads() {
		if w.GetNamespace() == pod.Namespace && w.GetName() == pod.Name && w.GetName() != "" {
			return w
		}
	}
	return nil
}

// sourceWorkload returns the pod's workload, or one made from what ZDS
// said when the state does not know it yet, so its traffic can still be
// routed (with the ZDS identity).
func sourceWorkload(v Workloads, pod Pod, node, trustDomain string) *workloadapi.Workload {
	if w := PodWorkload(v, pod); w != nil {
		return w
	}
	sa := pod.ServiceAccount
	if sa == "" {
		sa = state.DefaultServiceAccount
	}
	return &workloadapi.Workload{
		Uid: pod.UID, Name: pod.Name, Namespace: pod.Namespace, ServiceAccount: sa,
		TrustDomain: trustDomain, Node: node,
	}
}

// Outbound is the decision for one captured outbound connection.
type Outbound struct {
	route.Decision
	// Source is the pod's workload (from the state, or made from ZDS).
	Source *workloadapi.Workload
	// Headers are the HBONE request headers (HBONE only).
	Headers hbone.Headers
}

// DecideOutbound decides how to carry a connection the pod's client at
// client opened to dst. The source identity is always the pod's identity
// from ZDS (id): the certificate presented is the one istiod issued for the
// pod's service account. traceparent is the W3C trace context to send; ""
// generates one.
func DecideOutbound(v Workloads, pod Pod, id spiffe.ID, node string, client netip.Addr, dst netip.AddrPort, traceparent string) (Outbound, error) {
	src := sourceWorkload(v, pod, node, id.TrustDomain)
	d, err := route.Outbound(v, src, dst, nil)
	if err != nil {
		return Outbound{}, fmt.Errorf("routing %s → %s from pod %s: %w", client, dst, pod, err)
	}
	d.SourceIdentity = id
	out := Outbound{Decision: d, Source: src}
	switch d.Kind {
	case route.Waypoint:
		return Outbound{}, fmt.Errorf("routing %s → %s from pod %s: %w", client, dst, pod, ErrWaypoint)
	case route.HBONE:
		if traceparent == "" {
			traceparent = NewTraceparent()
		}
		out.Headers = hbone.Headers{
			Forwarded:   Forwarded(client),
			Baggage:     Baggage(src),
			Traceparent: traceparent,
		}
	}
	return out, nil
}

// Forwarded returns the RFC 7239 forwarded header naming the client.
func Forwarded(client netip.Addr) string {
	client = client.Unmap()
	if client.Is6() {
		return fmt.Sprintf(`for="[%s]"`, client)
	}
	return fmt.Sprintf("for=%s", client)
}

// Baggage returns the W3C baggage header with the source workload's
// metadata, as Istio's ztunnel sends it (keys of OpenTelemetry's semantic
// conventions). Empty values are left out.
func Baggage(w *workloadapi.Workload) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+baggageValue(v))
		}
	}
	add("k8s.cluster.name", w.GetClusterId())
	add("k8s.namespace.name", w.GetNamespace())
	add("k8s.pod.name", w.GetName())
	add("service.name", w.GetCanonicalName())
	add("service.version", w.GetCanonicalRevision())
	return strings.Join(parts, ",")
}

// baggageValue percent-encodes what W3C baggage does not allow in a value.
func baggageValue(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c >= 0x7f || c == '"' || c == ',' || c == ';' || c == '\\' || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// NewTraceparent returns a W3C traceparent with random trace and span IDs,
// not sampled.
func NewTraceparent() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-00"
}

// Inbound is the decision for one inbound connection.
type Inbound struct {
	route.InboundDecision
	// Target is where to connect: the pod's address and the port asked for.
	Target netip.AddrPort
}

// InboundConn describes an inbound connection to decide on.
type InboundConn struct {
	// Peer is the verified peer identity; nil for plaintext.
	Peer *spiffe.ID
	Src  netip.Addr
	Dst  netip.AddrPort
}

// DecideInbound finds the pod's workload, checks that c is for one of its
// addresses and evaluates its policies. An error (wrapping ErrNoWorkload,
// ErrNotPodAddress or a route error) means the pod does not serve c: HBONE
// answers 404; a denial is Allow false, not an error.
func DecideInbound(v Workloads, pod Pod, node, network string, c InboundConn) (Inbound, error) {
	w := PodWorkload(v, pod)
	if w == nil {
		return Inbound{}, fmt.Errorf("inbound to %s: pod %s: %w", c.Dst, pod, ErrNoWorkload)
	}
	dst := netip.AddrPortFrom(c.Dst.Addr().Unmap(), c.Dst.Port())
	if !hasAddr(w, dst.Addr()) {
		return Inbound{}, fmt.Errorf("inbound to %s: pod %s has addresses %s: %w", dst, pod, addrList(w), ErrNotPodAddress)
	}
	d, err := route.Inbound(v, route.InboundConn{
		Node: node, Network: network, DstIP: dst.Addr(), DstPort: dst.Port(),
		Peer: c.Peer, SrcIP: c.Src.Unmap(),
	})
	if err != nil {
		return Inbound{}, fmt.Errorf("inbound to %s: %w", dst, err)
	}
	if d.Workload.GetUid() != w.GetUid() {
		return Inbound{}, fmt.Errorf("inbound to %s: the address belongs to workload %s, not pod %s: %w", dst, d.Workload.GetUid(), pod, ErrNotPodAddress)
	}
	return Inbound{InboundDecision: d, Target: dst}, nil
}

func hasAddr(w *workloadapi.Workload, ip netip.Addr) bool {
	for _, b := range w.GetAddresses() {
		if a, ok := netip.AddrFromSlice(b); ok && a.Unmap() == ip {
			return true
		}
	}
	return false
}

func addrList(w *workloadapi.Workload) string {
	var s []string
	for _, b := range w.GetAddresses() {
		if a, ok := netip.AddrFromSlice(b); ok {
			s = append(s, a.Unmap().String())
		}
	}
	if len(s) == 0 {
		return "(none)"
	}
	return strings.Join(s, ",")
}

// InboundService guesses which service an inbound connection to w on port
// was for, as Istio's ztunnel does for its destination_service labels: the
// first of w's services (by key) that maps a port to this target port (a
// target port 0 means the service port itself). nil when none does.
func InboundService(v Workloads, w *workloadapi.Workload, port uint16) *workloadapi.Service {
	// On every inbound connection: no allocation, the smallest matching key
	// wins so the choice does not depend on map order.
	var best string
	var svc *workloadapi.Service
	for k, pl := range w.GetServices() {
		if svc != nil && k >= best {
			continue
		}
		for _, p := range pl.GetPorts() {
			target := p.GetTargetPort()
			if target == 0 {
				target = p.GetServicePort()
			}
			if target != uint32(port) {
				continue
			}
			if ns, host, ok := strings.Cut(k, "/"); ok {
				if s := v.ServiceByName(ns, host); s != nil {
					best, svc = k, s
				}
			}
			break
		}
	}
	return svc
}
