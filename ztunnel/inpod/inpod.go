package inpod

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/sockopt"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/pkg/zds"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// Ports ztunnel listens on inside every pod (DESIGN.md section 2), as the
// proxy refuses to forward to them.
const (
	OutboundPort = proxy.PortOutbound
	InboundPort  = proxy.PortInbound
	HBONEPort    = proxy.PortHBONE
	// Mark is SO_MARK on every socket ztunnel opens (1337).
	Mark = 0x539
)

// Identities is the part of the certificate manager pods need.
type Identities interface {
	// Forget drops an identity no pod on the node uses any more.
	Forget(id spiffe.ID)
}

// Config configures a Manager.
type Config struct {
	// Proxy is shared by every pod's proxy.
	Proxy proxy.Config
	// Store is subscribed to by Run; nil means no re-checks.
	Store *state.Store
	// DrainTimeout bounds how long Run, once its context ends, lets open
	// connections finish (0: they are closed at once).
	DrainTimeout time.Duration
	// Identities, when set, forgets a pod's identity when its last pod
	// leaves.
	Identities Identities
	// Prefetch, when set, is called (on its own goroutine) with a new pod's
	// identity so its certificate is ready before the first connection.
	Prefetch func(id spiffe.ID)
	// OnSnapshot, when set, is called after each ZDS snapshot is processed.
	OnSnapshot func()
	// NoListenerGuard leaves in-pod listeners without the eBPF guards
	// against port squatting (see the package doc); foreign listeners are
	// then only detected. For tests and kernels where the guards misbehave.
	NoListenerGuard bool
	// ForeignListenerInterval is how often each pod's namespace is scanned
	// for listeners on the in-pod ports that are not this ztunnel's; zero
	// means DefaultForeignListenerInterval, negative turns scanning off.
	ForeignListenerInterval time.Duration
	// OnForeignListener, when set, is called from a pod's scanner with the
	// number of foreign listeners on port whenever it changes (including
	// back to 0), and with 0 for each port whose last count was not 0 when
	// the pod stops being served. Calls for one pod never overlap; calls
	// for different pods may. It must not block.
	OnForeignListener func(pod proxy.Pod, port int, n int)
	// Mark and the ports default to the constants above.
	Mark                                 uint32
	OutboundPort, InboundPort, HBONEPort int
	Logger                               *slog.Logger
}

// Manager runs one proxy per enrolled pod.
type Manager struct {
	cfg Config
	log *slog.Logger

	lookupWarn, guardWarn sync.Once

	mu     sync.Mutex
	pods   map[string]*podEntry
	closed bool
}

type podEntry struct {
	pod       proxy.Pod
	ns        *os.File
	nsID      netns.ID
	proxy     *proxy.PodProxy
	guard     io.Closer // the namespace's SK_LOOKUP link; nil when unguarded
	stopWatch func()
}

var _ zds.Handler = (*Manager)(nil)

// ErrClosed is returned by AddPod after the Manager was closed.
var ErrClosed = errors.New("in-pod manager is closed")

// New returns a Manager.
func New(cfg Config) *Manager {
	if cfg.Mark == 0 {
		cfg.Mark = Mark
	}
	if cfg.OutboundPort == 0 {
		cfg.OutboundPort = OutboundPort
	}
	if cfg.InboundPort == 0 {
		cfg.InboundPort = InboundPort
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = HBONEPort
	}
	if cfg.ForeignListenerInterval == 0 {
		cfg.ForeignListenerInterval = DefaultForeignListenerInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Proxy.Logger == nil {
		cfg.Proxy.Logger = cfg.Logger
	}
	return &Manager{cfg: cfg, log: cfg.Logger, pods: map[string]*podEntry{}}
}

// Sockets returns the socket factory for a pod namespace: SO_MARK on every
// socket, SO_REUSEPORT and no MPTCP on listeners.
func Sockets(ns *os.File, mark uint32) *netns.Sockets {
	markCtl := sockopt.MarkControl(mark)
	s := &netns.Sockets{
		NS: ns,
		ListenConfig: net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
			if err := markCtl(network, address, c); err != nil {
				return err
			}
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("setting SO_REUSEPORT: %w", serr)
			}
			return nil
		}},
		Dialer: net.Dialer{Control: markCtl},
	}
	s.ListenConfig.SetMultipathTCP(false)
	return s
}

// AddPod starts the pod's proxy (or keeps the running one) and returns once
// its listeners are up. It owns w.Netns.
func (m *Manager) AddPod(ctx context.Context, w zds.WorkloadAdd) error {
	pod := proxy.Pod{UID: w.UID, Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount}
	log := m.log.With("pod", pod.Name, "namespace", pod.Namespace, "uid", pod.UID)
	nsID, err := netns.IDOf(w.Netns)
	if err != nil {
		w.Netns.Close()
		return fmt.Errorf("adding pod %s: reading its netns: %w", pod, err)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		w.Netns.Close()
		return ErrClosed
	}
	old := m.pods[pod.UID]
	m.mu.Unlock()
	if old != nil && old.nsID == nsID && old.pod == pod {
		w.Netns.Close()
		log.Debug("pod already served; keeping its proxy")
		return nil
	}
	e, err := m.start(ctx, pod, w.Netns)
	if err != nil {
		w.Netns.Close()
		log.Error("starting pod proxy failed", "error", err)
		return err
	}
	e.nsID = nsID
	p := e.proxy
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.stop(e)
		return ErrClosed
	}
	old = m.pods[pod.UID]
	m.pods[pod.UID] = e
	m.mu.Unlock()
	if old != nil {
		log.Info("pod re-added; replacing its proxy")
		m.stop(old)
		m.forgetIfUnused(old.proxy.Identity())
	}
	log.Info("pod proxy started", "identity", p.Identity().String(), "netns", nsID.String())
	if m.cfg.Prefetch != nil {
		go m.cfg.Prefetch(p.Identity())
	}
	return nil
}

// start opens the pod's listeners, guards them and starts its proxy and
// foreign-listener watch. The entry owns ns once start succeeds.
func (m *Manager) start(ctx context.Context, pod proxy.Pod, ns *os.File) (*podEntry, error) {
	s := Sockets(ns, m.cfg.Mark)
	var (
		ls     []net.Listener
		own    []ownListener
		byPort = map[int]net.Listener{}
	)
	fail := func(err error) (*podEntry, error) {
		for _, l := range ls {
			l.Close()
		}
		return nil, err
	}
	for _, port := range []int{m.cfg.OutboundPort, m.cfg.InboundPort, m.cfg.HBONEPort} {
		l, err := listen(ctx, s, port)
		if err != nil {
			return fail(fmt.Errorf("creating listener on port %d in pod %s: %w", port, pod, err))
		}
		ls = append(ls, l)
		byPort[port] = l
		inode, err := socketInode(l)
		if err != nil {
			return fail(fmt.Errorf("reading the socket of listener %d in pod %s: %w", port, pod, err))
		}
		own = append(own, ownListener{port: port, inode: inode})
	}
	var guard io.Closer
	if !m.cfg.NoListenerGuard {
		guard = m.guard(pod, ns, ls, byPort)
	}
	p, err := proxy.Start(m.cfg.Proxy, pod, proxy.Listeners{Outbound: ls[0], Inbound: ls[1], HBONE: ls[2]}, dialer{s})
	if err != nil {
		if guard != nil {
			guard.Close()
		}
		return nil, err
	}
	return &podEntry{pod: pod, ns: ns, proxy: p, guard: guard, stopWatch: m.startForeignWatch(pod, ns, own)}, nil
}

// guard protects the pod's listeners against squatting: the namespace's
// SK_LOOKUP program when the kernel allows it (its link is returned), else
// an SK_REUSEPORT program per listener, else nothing. Each fallback is
// logged once per Manager.
func (m *Manager) guard(pod proxy.Pod, ns *os.File, ls []net.Listener, byPort map[int]net.Listener) io.Closer {
	link, err := guardNamespace(ns, byPort)
	if err == nil {
		return link
	}
	m.lookupWarn.Do(func() {
		m.log.Warn("cannot attach the SK_LOOKUP guard to pod namespaces; guarding only each listener's SO_REUSEPORT group (squatters on 0.0.0.0 or a specific address are only detected)",
			"pod", pod.Name, "namespace", pod.Namespace, "error", err)
	})
	for _, l := range ls {
		if err := guardListener(l); err != nil {
			m.guardWarn.Do(func() {
				m.log.Warn("cannot guard in-pod listeners against port squatting; foreign listeners are only detected",
					"pod", pod.Name, "namespace", pod.Namespace, "error", err)
			})
		}
	}
	return nil
}

// dialer adapts the pod's socket factory to proxy.Dialer.
type dialer struct{ s *netns.Sockets }

func (d dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return d.s.Dial(ctx, network, address)
}

// listen binds dual-stack, or IPv4 only where the namespace has no IPv6.
func listen(ctx context.Context, s *netns.Sockets, port int) (net.Listener, error) {
	l, err := s.Listen(ctx, "tcp", fmt.Sprintf("[::]:%d", port))
	if err == nil {
		return l, nil
	}
	if errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EADDRNOTAVAIL) {
		return s.Listen(ctx, "tcp4", fmt.Sprintf("0.0.0.0:%d", port))
	}
	return nil, err
}

func (m *Manager) stop(e *podEntry) {
	e.stopWatch()
	e.proxy.Close()
	if e.guard != nil {
		e.guard.Close()
	}
	e.ns.Close()
}

// forgetIfUnused forgets id unless a served pod still has it.
func (m *Manager) forgetIfUnused(id spiffe.ID) {
	if m.cfg.Identities == nil {
		return
	}
	m.mu.Lock()
	for _, e := range m.pods {
		if e.proxy.Identity() == id {
			m.mu.Unlock()
			return
		}
	}
	m.mu.Unlock()
	m.cfg.Identities.Forget(id)
}

// KeepPod keeps whatever runs for uid; nothing to do.
func (m *Manager) KeepPod(_ context.Context, uid string) error {
	m.mu.Lock()
	_, ok := m.pods[uid]
	m.mu.Unlock()
	m.log.Debug("keep pod", "uid", uid, "known", ok)
	return nil
}

// DelPod stops the pod's proxy. Unknown uids are not an error.
func (m *Manager) DelPod(_ context.Context, uid string) error {
	m.mu.Lock()
	e := m.pods[uid]
	delete(m.pods, uid)
	m.mu.Unlock()
	if e == nil {
		m.log.Debug("del for unknown pod", "uid", uid)
		return nil
	}
	m.stop(e)
	m.forgetIfUnused(e.proxy.Identity())
	m.log.Info("pod proxy stopped", "pod", e.pod.Name, "namespace", e.pod.Namespace, "uid", uid)
	return nil
}

// SnapshotDone stops every pod not in uids.
func (m *Manager) SnapshotDone(ctx context.Context, uids []string) error {
	keep := make(map[string]bool, len(uids))
	for _, u := range uids {
		keep[u] = true
	}
	m.mu.Lock()
	var drop []string
	for uid := range m.pods {
		if !keep[uid] {
			drop = append(drop, uid)
		}
	}
	m.mu.Unlock()
	for _, uid := range drop {
		m.log.Info("pod not in the ZDS snapshot; stopping its proxy", "uid", uid)
		_ = m.DelPod(ctx, uid)
	}
	if m.cfg.OnSnapshot != nil {
		m.cfg.OnSnapshot()
	}
	return nil
}

// Recheck re-evaluates every pod's open inbound connections against the
// current state; it returns how many were closed.
func (m *Manager) Recheck() int {
	n := 0
	for _, p := range m.proxies() {
		n += p.Recheck()
	}
	return n
}

func (m *Manager) proxies() []*proxy.PodProxy {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps := make([]*proxy.PodProxy, 0, len(m.pods))
	for _, e := range m.pods {
		ps = append(ps, e.proxy)
	}
	return ps
}

// Pods describes the served pods, sorted by uid.
func (m *Manager) Pods() []proxy.PodStatus {
	var out []proxy.PodStatus
	for _, p := range m.proxies() {
		out = append(out, p.Status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out
}

// Run re-checks open connections after every state change until ctx ends,
// then drains every pod (Shutdown, bounded by Config.DrainTimeout) and
// returns.
func (m *Manager) Run(ctx context.Context) {
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), m.cfg.DrainTimeout)
		defer cancel()
		m.Shutdown(dctx)
	}()
	if m.cfg.Store == nil {
		<-ctx.Done()
		return
	}
	ch, cancel := m.cfg.Store.Subscribe()
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			if n := m.Recheck(); n > 0 {
				m.log.Info("closed connections denied after a state change", "count", n)
			}
		}
	}
}

// Shutdown drains every pod at once (proxy.PodProxy.Shutdown: no new
// connections, open ones may finish until ctx ends) and then stops it as
// Close does; later adds fail with ErrClosed. On a rolling update the new
// ztunnel already serves the pods' new connections. Idempotent.
func (m *Manager) Shutdown(ctx context.Context) {
	m.mu.Lock()
	m.closed = true
	pods := m.pods
	m.pods = map[string]*podEntry{}
	m.mu.Unlock()
	if len(pods) > 0 {
		m.log.Info("draining pods' connections", "pods", len(pods))
	}
	var wg sync.WaitGroup
	for _, e := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.proxy.Shutdown(ctx); err != nil {
				m.log.Warn("connections still open when the drain ended; closed", "pod", e.pod.Name, "namespace", e.pod.Namespace, "error", err)
			}
			m.stop(e)
		}()
	}
	wg.Wait()
}

// Close stops every pod; later adds fail with ErrClosed. Idempotent.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	pods := m.pods
	m.pods = map[string]*podEntry{}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range pods {
		wg.Add(1)
		go func() { defer wg.Done(); m.stop(e) }()
	}
	wg.Wait()
}
