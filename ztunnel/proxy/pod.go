package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/pkg/sockopt"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/hbone"
	"github.com/ambit-mesh/ambit/ztunnel/limit"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/route"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// State gives the current view of the mesh.
type State interface {
	Load() *state.View
}

var _ State = (*state.Store)(nil)

// Certificates gives an identity's current certificate.
type Certificates interface {
	GetCertificate(ctx context.Context, id spiffe.ID) (*tls.Certificate, error)
}

// Dialer opens connections from the pod's network namespace, marked so
// capture skips them.
type Dialer = hbone.Dialer

// Config is what every pod's proxy shares.
type Config struct {
	// Node is this ztunnel's node; inbound connections are only served for
	// workloads on it.
	Node    string
	Network string
	// TrustDomain of pod identities and of accepted peers.
	TrustDomain string
	State       State
	Certs       Certificates
	// TrustBundle returns the roots peers' certificates must chain to; called
	// per handshake.
	TrustBundle func() *x509.CertPool
	// Metrics may be nil.
	Metrics *metrics.Metrics
	// Logger receives the access log and events; default slog.Default.
	Logger *slog.Logger
	// ConnectTimeout bounds each upstream connect and HBONE dial; default
	// 10s.
	ConnectTimeout time.Duration
	// Own are ztunnel's own endpoints, which no path forwards to; the zero
	// value means DefaultOwnEndpoints(nil).
	Own OwnEndpoints
	// Sockets records the connections ztunnel dials, shared by every pod of
	// the node, to refuse any connection ztunnel would make to itself; nil
	// means a registry of the pod's own.
	Sockets *OwnSockets
	// OutboundLimits bound the pod's own outbound connections;
	// InboundLimits bound each source address's connections into the pod
	// (plaintext and HBONE streams together). Zero fields are unlimited;
	// see limit.Defaults.
	OutboundLimits, InboundLimits limit.Config
	// NodeLimiter, when set, is the node's budget every pod's limiters
	// draw on too (shared by every pod of the node).
	NodeLimiter *limit.Limiter
}

// Listeners are a pod's three listeners, made in its network namespace.
type Listeners struct {
	Outbound, Inbound, HBONE net.Listener
}

// PodProxy serves one pod. Its methods are safe for concurrent use.
type PodProxy struct {
	cfg  Config
	pod  Pod
	id   spiffe.ID
	ls   Listeners
	d    Dialer
	log  *slog.Logger
	pool *hbone.Pool
	srv  *hbone.Server

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	cache atomic.Pointer[podView]

	own      *OwnSockets
	outLimit *limit.Limiter
	inLimits *limit.Set[netip.Addr]
	refusals refusalLog

	mu     sync.Mutex
	conns  map[*tracked]struct{}
	closed bool
}

// podView is a state view with the pod's own workload resolved once: the
// lookup by namespace/name scans every workload.
type podView struct {
	*state.View
	uid string
	w   *workloadapi.Workload
}

// WorkloadByUID answers the pod's uid from the resolved workload.
func (v *podView) WorkloadByUID(uid string) *workloadapi.Workload {
	if uid == v.uid && v.w != nil {
		return v.w
	}
	return v.View.WorkloadByUID(uid)
}

// view returns the current state, resolving the pod's workload once per
// state version.
func (p *PodProxy) view() *podView {
	v := p.cfg.State.Load()
	if c := p.cache.Load(); c != nil && c.View == v {
		return c
	}
	pv := &podView{View: v, uid: p.pod.UID, w: PodWorkload(v, p.pod)}
	p.cache.Store(pv)
	return pv
}

// tracked is an open connection; inbound ones are re-checked on policy
// changes.
type tracked struct {
	inbound *InboundConn // nil for outbound
	close   func()
	revoked bool // closed by Recheck; guarded by PodProxy.mu
}

// PodStatus is a pod's proxy for the admin endpoint.
type PodStatus struct {
	UID       string            `json:"uid"`
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Identity  string            `json:"identity"`
	Listeners map[string]string `json:"listeners"`
	OpenConns int               `json:"openConnections"`
}

// Start serves ls for pod and returns once the goroutines run. It takes
// ownership of ls (closed by Close, also when Start fails); d is borrowed.
func Start(cfg Config, pod Pod, ls Listeners, d Dialer) (*PodProxy, error) {
	closeLs := func() {
		for _, l := range []net.Listener{ls.Outbound, ls.Inbound, ls.HBONE} {
			if l != nil {
				l.Close()
			}
		}
	}
	if cfg.State == nil || cfg.Certs == nil || cfg.TrustBundle == nil || d == nil ||
		ls.Outbound == nil || ls.Inbound == nil || ls.HBONE == nil {
		closeLs()
		return nil, errors.New("proxy.Start: State, Certs, TrustBundle, the dialer and all three listeners are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.Own.PodPorts == nil && cfg.Own.NodePorts == nil {
		cfg.Own = DefaultOwnEndpoints(cfg.Own.Addrs)
	}
	if cfg.Sockets == nil {
		cfg.Sockets = NewOwnSockets()
	}
	id, err := pod.Identity(cfg.TrustDomain)
	if err != nil {
		closeLs()
		return nil, err
	}
	// Plain connections (to apps and passthrough destinations) are
	// recorded: one landing on any of ztunnel's listeners is a loop. HBONE
	// connections are not: one pod's tunnel to another pod of the node is
	// ztunnel at both ends by design.
	p := &PodProxy{
		cfg: cfg, pod: pod, id: id, ls: ls, d: cfg.Sockets.Dialer(d),
		log:      cfg.Logger.With("pod", pod.Name, "namespace", pod.Namespace, "uid", pod.UID),
		conns:    map[*tracked]struct{}{},
		own:      cfg.Sockets,
		outLimit: limit.NewChild(cfg.NodeLimiter, "", cfg.OutboundLimits),
		inLimits: limit.NewSet[netip.Addr](cfg.NodeLimiter, cfg.InboundLimits),
	}
	p.refusals = refusalLog{log: p.log, metrics: cfg.Metrics, pod: pod}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.pool, err = hbone.NewPool(hbone.PoolConfig{
		TrustBundle: cfg.TrustBundle,
		ClientCertificate: func(src spiffe.ID) (*tls.Certificate, error) {
			ctx, cancel := context.WithTimeout(p.ctx, cfg.ConnectTimeout)
			defer cancel()
			return cfg.Certs.GetCertificate(ctx, src)
		},
		Dialer:           d,
		HandshakeTimeout: cfg.ConnectTimeout,
		Logger:           p.log,
	})
	if err != nil {
		closeLs()
		p.cancel()
		return nil, fmt.Errorf("hbone pool of pod %s: %w", pod, err)
	}
	p.srv, err = hbone.NewServer(hbone.ServerConfig{
		TrustDomain: cfg.TrustDomain,
		TrustBundle: cfg.TrustBundle,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cfg.Certs.GetCertificate(hello.Context(), id)
		},
		Handler: inboundHandler{p},
		Logger:  p.log,
		// Runs on the connection's read loop: counting and a rate-limited
		// log line only.
		OnLimit: func(reason string) {
			p.refusals.refuse("inbound", "hbone_"+reason, fmt.Errorf("an HBONE peer of pod %s went past the per-connection limit %q", pod, reason))
		},
	})
	if err != nil {
		closeLs()
		p.pool.Close()
		p.cancel()
		return nil, fmt.Errorf("hbone server of pod %s: %w", pod, err)
	}
	p.wg.Add(3)
	go func() { defer p.wg.Done(); p.acceptLoop(ls.Outbound, "outbound", p.serveOutbound) }()
	go func() { defer p.wg.Done(); p.acceptLoop(ls.Inbound, "inbound", p.serveInboundPlain) }()
	go func() { defer p.wg.Done(); _ = p.srv.Serve(guardListener{Listener: ls.HBONE, p: p}) }()
	return p, nil
}

// Identity is the pod's SPIFFE ID.
func (p *PodProxy) Identity() spiffe.ID { return p.id }

// Pod is what ZDS said about the pod.
func (p *PodProxy) Pod() Pod { return p.pod }

// Status describes the pod's proxy.
func (p *PodProxy) Status() PodStatus {
	p.mu.Lock()
	n := len(p.conns)
	p.mu.Unlock()
	return PodStatus{
		UID: p.pod.UID, Name: p.pod.Name, Namespace: p.pod.Namespace, Identity: p.id.String(),
		Listeners: map[string]string{
			"outbound": p.ls.Outbound.Addr().String(),
			"inbound":  p.ls.Inbound.Addr().String(),
			"hbone":    p.ls.HBONE.Addr().String(),
		},
		OpenConns: n,
	}
}

// Close stops the listeners, closes every open connection and the pool,
// and waits for the pod's goroutines. Idempotent.
func (p *PodProxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := p.conns
	p.conns = map[*tracked]struct{}{}
	p.mu.Unlock()
	p.cancel()
	p.ls.Outbound.Close()
	p.ls.Inbound.Close()
	p.ls.HBONE.Close()
	p.srv.Close()
	for t := range conns {
		t.close()
	}
	p.pool.Close()
	p.wg.Wait()
	return nil
}

// Shutdown drains the proxy: it stops accepting (the listeners close, and
// HBONE peers get GOAWAY so they open new streams elsewhere), waits until
// every open connection has ended or ctx ends, then closes what is left
// as Close does. A successor ztunnel that took over the pod's listeners
// serves the new connections meanwhile.
func (p *PodProxy) Shutdown(ctx context.Context) error {
	p.ls.Outbound.Close()
	p.ls.Inbound.Close()
	hctx, hcancel := context.WithCancel(ctx)
	defer hcancel()
	hdone := make(chan struct{})
	go func() { defer close(hdone); _ = p.srv.Shutdown(hctx) }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var err error
	for err == nil && (p.openConns() > 0 || !closed(hdone)) {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-tick.C:
		}
	}
	hcancel()
	<-hdone
	if cerr := p.Close(); err == nil {
		err = cerr
	}
	return err
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (p *PodProxy) openConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Recheck evaluates every open inbound connection against the current
// state and closes those it no longer allows (or no longer serves). It
// returns how many it closed.
func (p *PodProxy) Recheck() int {
	v := p.view()
	var deny []*tracked
	p.mu.Lock()
	for t := range p.conns {
		if t.inbound == nil {
			continue
		}
		in, err := DecideInbound(v, p.pod, p.cfg.Node, p.cfg.Network, *t.inbound)
		if err != nil || !in.Allow {
			reason := in.Reason
			if err != nil {
				reason = err.Error()
			}
			p.log.Info("closing connection no longer allowed", "src", t.inbound.Src, "dst", t.inbound.Dst,
				"src_identity", idString(t.inbound.Peer), "reason", reason)
			t.revoked = true
			deny = append(deny, t)
		}
	}
	p.mu.Unlock()
	for _, t := range deny {
		t.close()
	}
	return len(deny)
}

// track registers an open connection; it returns false (and closes it)
// when the proxy is closing.
func (p *PodProxy) track(t *tracked) bool {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		t.close()
		return false
	}
	p.conns[t] = struct{}{}
	p.mu.Unlock()
	return true
}

// untrack forgets t and reports whether Recheck closed it.
func (p *PodProxy) untrack(t *tracked) (revoked bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, t)
	return t.revoked
}

func (p *PodProxy) acceptLoop(ln net.Listener, name string, serve func(net.Conn)) {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed; retrying", "listener", name, "error", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
				continue
			case <-p.ctx.Done():
				return
			}
		}
		backoff = 0
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if !p.isOwn(c, name) {
				serve(c)
			}
		}()
	}
}

// isOwn refuses (and closes) c when ztunnel itself dialed it: a loop.
func (p *PodProxy) isOwn(c net.Conn, listener string) bool {
	remote, local := addrOf(c.RemoteAddr()), addrOf(c.LocalAddr())
	if !p.own.Check(remote, local) {
		return false
	}
	abort(c)
	p.refusals.refuse(listener, reasonLoop, fmt.Errorf("%w: the connection from %s to %s is ztunnel's own", ErrSelfCall, remote, local))
	return true
}

// guardListener makes the HBONE server's connections refuse themselves
// when ztunnel dialed them: the check runs on the connection's first Read
// (the TLS handshake, on the connection's own goroutine), so the accept
// loop never waits on it.
type guardListener struct {
	net.Listener
	p *PodProxy
}

func (g guardListener) Accept() (net.Conn, error) {
	c, err := g.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &guardConn{Conn: c, p: g.p}, nil
}

type guardConn struct {
	net.Conn
	p       *PodProxy
	checked bool // only the connection's reader touches it
	own     bool
}

func (g *guardConn) Read(b []byte) (int, error) {
	if !g.checked {
		g.checked = true
		g.own = g.p.isOwn(g.Conn, "hbone")
	}
	if g.own {
		return 0, ErrSelfCall
	}
	return g.Conn.Read(b)
}

// connLog is what the access-log line and the metrics say about one
// connection.
type connLog struct {
	direction      string
	src, dst       string
	srcID, dstID   *spiffe.ID
	route          string
	labels         metrics.Labels
	start          time.Time
	sent, received int64
	outcome        string
	err            error
}

func (p *PodProxy) opened(cl *connLog) {
	if p.cfg.Metrics != nil {
		p.cfg.Metrics.Opened(cl.labels)
	}
}

func (p *PodProxy) finish(cl *connLog) {
	if p.cfg.Metrics != nil {
		p.cfg.Metrics.Closed(cl.labels, cl.sent, cl.received)
	}
	attrs := []any{
		"direction", cl.direction, "src", cl.src, "dst", cl.dst,
		"src_identity", idString(cl.srcID), "dst_identity", idString(cl.dstID),
		"route", cl.route, "bytes_sent", cl.sent, "bytes_received", cl.received,
		"duration", time.Since(cl.start).Round(time.Microsecond), "outcome", cl.outcome,
	}
	if cl.err != nil {
		attrs = append(attrs, "error", cl.err.Error())
	}
	p.log.Info("connection", attrs...)
}

func idString(id *spiffe.ID) string {
	if id == nil || id.IsZero() {
		return ""
	}
	return id.String()
}

func addrOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// abort closes c with a reset, so the client sees a failure rather than an
// orderly end.
func abort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}

func (p *PodProxy) serveOutbound(c net.Conn) {
	start := time.Now()
	client := addrOf(c.RemoteAddr())
	ticket, err := p.outLimit.Admit()
	if err != nil {
		abort(c)
		p.refusals.refuse("outbound", reasonOf(err), fmt.Errorf("outbound from %s: %w", client, err))
		return
	}
	defer ticket.Done()
	cl := &connLog{direction: "outbound", src: client.String(), srcID: &p.id, start: start, outcome: "ok"}
	dst, err := sockopt.OriginalDst(c)
	if err != nil {
		abort(c)
		p.log.Warn("outbound connection without original destination", "src", client, "error", err)
		return
	}
	cl.dst = dst.String()
	v := p.view()
	out, err := DecideOutbound(v, p.pod, p.id, p.cfg.Node, client.Addr(), dst, "")
	if err == nil {
		err = CheckOutbound(p.cfg.Own, v, p.cfg.Network, v.w, out)
		if errors.Is(err, ErrSelfCall) {
			abort(c)
			p.refusals.refuse("outbound", reasonSelfCall, fmt.Errorf("outbound %s → %s: %w", client, dst, err))
			return
		}
	}
	srcPeer := metrics.Peer{Workload: PodWorkload(v, p.pod), Identity: &p.id, Namespace: p.pod.Namespace, Name: p.pod.Name}
	if err != nil {
		abort(c)
		cl.outcome, cl.err, cl.route = "error", err, "none"
		cl.labels = metrics.Build(metrics.Conn{Reporter: metrics.ReporterSource, Source: srcPeer, Flags: metrics.FlagConnect})
		p.opened(cl)
		p.finish(cl)
		return
	}
	cl.route = out.Kind.String()
	mc := metrics.Conn{Reporter: metrics.ReporterSource, Source: srcPeer,
		Destination: metrics.Peer{Workload: out.Workload}, Service: out.Service}
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.ConnectTimeout)
	var upstream net.Conn
	var stream *hbone.Stream
	switch out.Kind {
	case route.HBONE:
		dstID := out.DestIdentity
		cl.dstID = &dstID
		mc.Destination.Identity = &dstID
		mc.MutualTLS = true
		stream, err = p.pool.Dial(ctx, hbone.Key{Source: p.id, Destination: dstID, Addr: out.Target}, out.Authority, out.Headers)
		if err != nil {
			err = fmt.Errorf("outbound %s → %s via %s: %w", client, dst, out.Target, err)
		}
	default: // Passthrough
		upstream, err = p.d.DialContext(ctx, "tcp", out.Target.String())
		if err != nil {
			err = fmt.Errorf("outbound %s → %s: dialing %s from pod %s: %w", client, dst, out.Target, p.pod, err)
		}
	}
	cancel()
	if err != nil {
		abort(c)
		cl.outcome, cl.err = "error", err
		mc.Flags = metrics.FlagConnect
		if errors.Is(err, hbone.ErrRejected) {
			var re *hbone.RejectedError
			if errors.As(err, &re) && re.Status == http.StatusForbidden {
				mc.Flags = metrics.FlagDenied
				cl.outcome = "denied"
			}
		}
		cl.labels = metrics.Build(mc)
		p.opened(cl)
		p.finish(cl)
		return
	}
	ticket.Established()
	cl.labels = metrics.Build(mc)
	p.opened(cl)
	t := &tracked{}
	if stream != nil {
		t.close = func() { stream.Close(); c.Close() }
	} else {
		t.close = func() { upstream.Close(); c.Close() }
	}
	if !p.track(t) {
		cl.outcome = "closed"
		p.finish(cl)
		return
	}
	if stream != nil {
		cl.sent, cl.received, err = hbone.Relay(stream, c)
	} else {
		cl.sent, cl.received, err = relayConns(c, upstream)
	}
	p.untrack(t)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		cl.outcome, cl.err = "error", err
	}
	p.finish(cl)
}

func (p *PodProxy) serveInboundPlain(c net.Conn) {
	start := time.Now()
	src := addrOf(c.RemoteAddr())
	cl := &connLog{direction: "inbound_plaintext", src: src.String(), start: start, outcome: "ok", route: "plaintext"}
	dst, err := sockopt.OriginalDst(c)
	if err != nil {
		abort(c)
		p.log.Warn("inbound connection without original destination", "src", src, "error", err)
		return
	}
	cl.dst = dst.String()
	if err := CheckInbound(p.cfg.Own, dst); err != nil {
		abort(c)
		p.refusals.refuse("inbound", reasonSelfCall, fmt.Errorf("inbound from %s: %w", src, err))
		return
	}
	ticket, err := p.inLimits.Admit(src.Addr())
	if err != nil {
		abort(c)
		p.refusals.refuse("inbound", reasonOf(err), fmt.Errorf("inbound %s → %s: %w", src, dst, err))
		return
	}
	defer ticket.Done()
	ic := InboundConn{Src: src.Addr(), Dst: dst}
	p.serveInbound(p.ctx, ticket, cl, ic, c, nil)
}

// serveInbound decides, dials the pod and relays for both inbound paths.
// Exactly one of c (plaintext) and s (HBONE) is set. ctx ends the dial
// (for HBONE, the stream's context: a reset stream cancels its dial);
// ticket is the source's admission, marked established once dialed.
func (p *PodProxy) serveInbound(ctx context.Context, ticket *limit.Ticket, cl *connLog, ic InboundConn, c net.Conn, s *hbone.Stream) {
	v := p.view()
	mc := metrics.Conn{Reporter: metrics.ReporterDestination, MutualTLS: s != nil,
		Source:      metrics.Peer{Identity: ic.Peer, Workload: peerWorkload(v, ic)},
		Destination: metrics.Peer{Workload: PodWorkload(v, p.pod), Identity: &p.id, Namespace: p.pod.Namespace, Name: p.pod.Name}}
	cl.srcID, cl.dstID = ic.Peer, &p.id
	fail := func(status int, flags, outcome string, err error) {
		if s != nil && status != 0 {
			_ = s.Reject(status, err.Error())
		} else if s == nil {
			abort(c)
		}
		mc.Flags = flags
		cl.labels = metrics.Build(mc)
		cl.outcome, cl.err = outcome, err
		p.opened(cl)
		p.finish(cl)
	}
	mc.Service = InboundService(v, mc.Destination.Workload, ic.Dst.Port())
	in, err := DecideInbound(v, p.pod, p.cfg.Node, p.cfg.Network, ic)
	if err != nil {
		fail(http.StatusNotFound, metrics.FlagDenied, "not_served", err)
		return
	}
	if !in.Allow {
		fail(http.StatusForbidden, metrics.FlagDenied, "denied", fmt.Errorf("%w: %s", hbone.ErrDenied, in.Reason))
		return
	}
	if len(in.Audits) > 0 {
		p.log.Info("audit: policies matched (AUDIT or dry-run; not enforced)", "src", cl.src, "dst", cl.dst, "src_identity", idString(cl.srcID), "policies", in.Audits)
	}
	dctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	stop := context.AfterFunc(p.ctx, cancel) // the pod's proxy closing ends the dial too
	upstream, err := p.d.DialContext(dctx, "tcp", in.Target.String())
	stop()
	cancel()
	if err != nil {
		fail(http.StatusServiceUnavailable, metrics.FlagConnect, "error",
			fmt.Errorf("inbound to %s: dialing the app in pod %s: %w", in.Target, p.pod, err))
		return
	}
	if s != nil {
		if err := s.Accept(); err != nil {
			upstream.Close()
			fail(0, metrics.FlagConnect, "error", err)
			return
		}
	}
	ticket.Established()
	cl.labels = metrics.Build(mc)
	p.opened(cl)
	t := &tracked{inbound: &ic}
	if s != nil {
		t.close = func() { s.Close(); upstream.Close() }
	} else {
		t.close = func() { abort(c); upstream.Close() }
	}
	if !p.track(t) {
		cl.outcome = "closed"
		p.finish(cl)
		return
	}
	if s != nil {
		cl.sent, cl.received, err = hbone.Relay(s, upstream)
	} else {
		cl.sent, cl.received, err = relayConns(c, upstream)
	}
	if p.untrack(t) {
		cl.outcome, cl.err = "revoked", errors.New("closed: a policy change denies the connection")
		if p.cfg.Metrics != nil {
			p.cfg.Metrics.Revoked(cl.labels)
		}
	} else if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		cl.outcome, cl.err = "error", err
	}
	p.finish(cl)
}

// peerWorkload is the source workload of an inbound connection: the one at
// its source address, if its identity is the verified one (or, plaintext,
// whatever is there).
func peerWorkload(v Workloads, ic InboundConn) *workloadapi.Workload {
	w := v.WorkloadByAddr("", ic.Src.Unmap())
	if w == nil {
		return nil
	}
	if ic.Peer != nil && state.Identity(w) != *ic.Peer {
		return nil
	}
	return w
}

// inboundHandler is the pod's HBONE server handler.
type inboundHandler struct{ p *PodProxy }

// Authorize checks only that the authority is one of the pod's addresses
// (404 otherwise); policy needs the source address, which ServeHBONE has.
func (h inboundHandler) Authorize(_ context.Context, req *hbone.Request) (netip.AddrPort, error) {
	p := h.p
	v := p.view()
	w := PodWorkload(v, p.pod)
	if w == nil {
		return netip.AddrPort{}, fmt.Errorf("%w: pod %s has no workload in ztunnel's state yet", hbone.ErrNotServed, p.pod)
	}
	a := netip.AddrPortFrom(req.Authority.Addr().Unmap(), req.Authority.Port())
	if err := CheckInbound(p.cfg.Own, a); err != nil {
		err = fmt.Errorf("%w: %w", hbone.ErrBadRequest, err)
		p.refusals.refuse("inbound", reasonSelfCall, fmt.Errorf("hbone from %s: %w", req.Peer, err))
		return netip.AddrPort{}, err
	}
	if !hasAddr(w, a.Addr()) {
		return netip.AddrPort{}, fmt.Errorf("%w: %s is not an address of pod %s (%s)", hbone.ErrNotServed, a, p.pod, addrList(w))
	}
	return a, nil
}

// ServeHBONE serves an authorized stream. ctx ends when the stream is reset
// or its connection ends, which cancels the dial to the app.
func (h inboundHandler) ServeHBONE(ctx context.Context, s *hbone.Stream) {
	p := h.p
	req := s.Request()
	src := addrOf(s.RemoteAddr())
	ticket, err := p.inLimits.Admit(src.Addr())
	if err != nil {
		_ = s.Reject(http.StatusServiceUnavailable, err.Error())
		p.refusals.refuse("inbound", reasonOf(err), fmt.Errorf("hbone from %s (%s) to %s: %w", req.Peer, src, req.Target, err))
		return
	}
	defer ticket.Done()
	peer := req.Peer
	cl := &connLog{direction: "inbound", src: src.String(), dst: req.Target.String(), start: time.Now(), outcome: "ok", route: "hbone"}
	p.serveInbound(ctx, ticket, cl, InboundConn{Peer: &peer, Src: src.Addr(), Dst: req.Target}, nil, s)
}

// relayConns copies both ways between the client c and upstream u with
// half-close, until both directions end; it closes both. It returns the
// bytes sent to c and received from it.
func relayConns(c, u net.Conn) (toClient, fromClient int64, err error) {
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := io.Copy(c, u)
		if err == nil {
			err = closeWrite(c)
		}
		if err != nil {
			c.Close()
			u.Close()
		}
		done <- result{n, err}
	}()
	fromClient, err = io.Copy(u, c)
	if err == nil {
		err = closeWrite(u)
	}
	if err != nil {
		c.Close()
		u.Close()
	}
	r := <-done
	c.Close()
	u.Close()
	if err == nil {
		err = r.err
	}
	return r.n, fromClient, err
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
