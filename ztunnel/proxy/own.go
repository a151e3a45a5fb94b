package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/ztunnel/route"
)

// ErrSelfCall refuses a connection that would reach one of ztunnel's own
// listeners: it would loop ztunnel into itself.
var ErrSelfCall = errors.New("destination is one of ztunnel's own listeners")

// Ports of ztunnel's own listeners (DESIGN.md section 2).
const (
	PortOutbound  = 15001
	PortInbound   = 15006
	PortHBONE     = 15008
	PortDNS       = 15053
	PortAdmin     = 15000
	PortMetrics   = 15020
	PortReadiness = 15021
)

// OwnEndpoints says where ztunnel itself listens, so no path forwards
// there: the ports of its listeners inside every enrolled pod, and its own
// endpoints (admin, metrics, readiness) at its own addresses.
type OwnEndpoints struct {
	// PodPorts are ztunnel's listener ports in every enrolled pod's network
	// namespace.
	PodPorts []uint16
	// NodePorts are ztunnel's own endpoints' ports at Addrs.
	NodePorts []uint16
	// Addrs returns ztunnel's own addresses (its network namespace's); nil
	// means none are known.
	Addrs func() []netip.Addr
}

// DefaultOwnEndpoints are the standard ports, with addrs as ztunnel's
// addresses.
func DefaultOwnEndpoints(addrs func() []netip.Addr) OwnEndpoints {
	return OwnEndpoints{
		PodPorts:  []uint16{PortOutbound, PortInbound, PortHBONE, PortDNS},
		NodePorts: []uint16{PortAdmin, PortMetrics, PortReadiness},
		Addrs:     addrs,
	}
}

// IsPodPort reports whether port is one of ztunnel's in-pod listener ports.
func (o OwnEndpoints) IsPodPort(port uint16) bool { return slices.Contains(o.PodPorts, port) }

// checkTarget refuses target when it is one of ztunnel's own endpoints: an
// in-pod listener port at a pod address of the node (pod) or at loopback,
// or an own endpoint at ztunnel's own address. podLocal reports whether an
// address is an enrolled pod's (whose netns holds ztunnel's listeners).
func (o OwnEndpoints) checkTarget(target netip.AddrPort, podLocal func(netip.Addr) bool) error {
	ip, port := target.Addr().Unmap(), target.Port()
	if o.IsPodPort(port) && (ip.IsLoopback() || ip.IsUnspecified() || podLocal(ip)) {
		return fmt.Errorf("%w: %s is ztunnel's in-pod port %d", ErrSelfCall, target, port)
	}
	if slices.Contains(o.NodePorts, port) {
		if ip.IsLoopback() || ip.IsUnspecified() {
			return fmt.Errorf("%w: %s is ztunnel's own endpoint", ErrSelfCall, target)
		}
		if o.Addrs != nil && slices.Contains(o.Addrs(), ip) {
			return fmt.Errorf("%w: %s is ztunnel's own endpoint", ErrSelfCall, target)
		}
	}
	return nil
}

// CheckOutbound refuses an outbound decision whose far end is one of
// ztunnel's own listeners: through a tunnel, the port asked of the
// destination pod (its ztunnel would dial its own listener there); in
// plaintext, the target itself: an in-pod port at the source pod's own
// address (pod, nil when unknown), at any workload's address or at
// loopback, or ztunnel's own endpoints. The error wraps ErrSelfCall.
func CheckOutbound(own OwnEndpoints, v Workloads, network string, pod *workloadapi.Workload, out Outbound) error {
	if out.Kind == route.HBONE || out.Kind == route.Waypoint {
		if own.IsPodPort(out.Authority.Port()) {
			return fmt.Errorf("%w: %s asks the destination pod for ztunnel's port %d", ErrSelfCall, out.Authority, out.Authority.Port())
		}
		return nil
	}
	return own.checkTarget(out.Target, func(ip netip.Addr) bool {
		return (pod != nil && hasAddr(pod, ip)) || v.WorkloadByAddr(network, ip) != nil
	})
}

// CheckInbound refuses an inbound connection (plaintext or through HBONE)
// for one of ztunnel's in-pod ports: serving it would dial ztunnel's own
// listener inside the pod. The error wraps ErrSelfCall.
func CheckInbound(own OwnEndpoints, dst netip.AddrPort) error {
	if own.IsPodPort(dst.Port()) {
		return fmt.Errorf("%w: %s is ztunnel's in-pod port %d", ErrSelfCall, dst, dst.Port())
	}
	return nil
}

// LocalAddrs returns a function that lists the addresses of the calling
// process's network namespace, refreshed at most every refresh.
func LocalAddrs(refresh time.Duration) func() []netip.Addr {
	var mu sync.Mutex
	var cached []netip.Addr
	var at time.Time
	return func() []netip.Addr {
		mu.Lock()
		defer mu.Unlock()
		if cached != nil && time.Since(at) < refresh {
			return cached
		}
		as, err := net.InterfaceAddrs()
		if err != nil {
			return cached
		}
		out := make([]netip.Addr, 0, len(as))
		for _, a := range as {
			if pn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(pn.IP); ok {
					out = append(out, ip.Unmap())
				}
			}
		}
		cached, at = out, time.Now()
		return cached
	}
}

// OwnSockets records the plain connections ztunnel dials (to apps and
// passthrough destinations), node-wide, so that a connection accepted by
// one of its listeners can be recognised as ztunnel's own: then ztunnel is
// both ends of one connection, a loop, whatever ports and addresses led
// there. HBONE connections between pods of one node are ztunnel at both
// ends by design and are not recorded.
//
// A dial is registered as pending for its destination before it connects
// and by its exact local address once connected. Check on an accepted
// connection matches its remote address against the connected ones; when a
// dial to the accepted connection's local address is still pending (its
// connect and the accept race), Check waits for it, bounded by wait.
// Loopback local addresses are not recorded: they repeat across pods.
type OwnSockets struct {
	wait time.Duration

	mu          sync.Mutex
	cond        sync.Cond // on mu: a pending dial ended
	pending     map[netip.AddrPort]int
	established map[netip.AddrPort]int
}

// NewOwnSockets returns an empty registry.
func NewOwnSockets() *OwnSockets {
	o := &OwnSockets{
		wait:        100 * time.Millisecond,
		pending:     map[netip.AddrPort]int{},
		established: map[netip.AddrPort]int{},
	}
	o.cond.L = &o.mu
	return o
}

// Dialer wraps d so that every connection it opens is recorded until
// closed.
func (o *OwnSockets) Dialer(d Dialer) Dialer { return ownDialer{o: o, d: d} }

type ownDialer struct {
	o *OwnSockets
	d Dialer
}

func (od ownDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	dst, perr := netip.ParseAddrPort(address)
	if perr == nil {
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		od.o.begin(dst)
	}
	c, err := od.d.DialContext(ctx, network, address)
	if perr != nil {
		return c, err
	}
	if err != nil {
		od.o.end(dst, netip.AddrPort{})
		return nil, err
	}
	local := addrOf(c.LocalAddr())
	if local.Addr().IsLoopback() {
		od.o.end(dst, netip.AddrPort{})
		return c, nil
	}
	od.o.end(dst, local)
	var once sync.Once
	forget := func() { once.Do(func() { od.o.forget(local) }) }
	if tc, ok := c.(*net.TCPConn); ok {
		return &ownTCPConn{TCPConn: tc, forget: forget}, nil
	}
	return &ownConn{Conn: c, forget: forget}, nil
}

// ownTCPConn forgets its local address once, on Close. It embeds the
// *net.TCPConn so io.Copy keeps using splice in both directions.
type ownTCPConn struct {
	*net.TCPConn
	forget func()
}

func (c *ownTCPConn) Close() error {
	c.forget()
	return c.TCPConn.Close()
}

// ownConn is the same for any other net.Conn.
type ownConn struct {
	net.Conn
	forget func()
}

func (c *ownConn) Close() error {
	c.forget()
	return c.Conn.Close()
}

func (o *OwnSockets) begin(dst netip.AddrPort) {
	o.mu.Lock()
	o.pending[dst]++
	o.mu.Unlock()
}

func (o *OwnSockets) end(dst, local netip.AddrPort) {
	o.mu.Lock()
	if o.pending[dst]--; o.pending[dst] <= 0 {
		delete(o.pending, dst)
	}
	if local.IsValid() {
		o.established[local]++
	}
	o.mu.Unlock()
	o.cond.Broadcast()
}

func (o *OwnSockets) forget(local netip.AddrPort) {
	o.mu.Lock()
	if o.established[local]--; o.established[local] <= 0 {
		delete(o.established, local)
	}
	o.mu.Unlock()
}

// Check reports whether the accepted connection from remote to local is one
// ztunnel dialed itself.
func (o *OwnSockets) Check(remote, local netip.AddrPort) bool {
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	deadline := time.Now().Add(o.wait)
	o.mu.Lock()
	defer o.mu.Unlock()
	for {
		if o.established[remote] > 0 {
			return true
		}
		if o.pending[local] == 0 || !time.Now().Before(deadline) {
			return false
		}
		// The dial that may be this connection's other end has not
		// returned yet: wait for it (cond has no timeout; a timer wakes
		// us at the deadline).
		t := time.AfterFunc(time.Until(deadline), o.cond.Broadcast)
		o.cond.Wait()
		t.Stop()
	}
}
