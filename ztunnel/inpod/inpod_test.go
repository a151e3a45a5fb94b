package inpod

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/pkg/zds"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

const prefix = "ambit-t-zi-"

func TestMain(m *testing.M) { netnstest.Main(m, prefix) }

type noCerts struct{}

func (noCerts) GetCertificate(context.Context, spiffe.ID) (*tls.Certificate, error) {
	return nil, errors.New("no certificates in this test")
}

type forgets struct {
	mu  sync.Mutex
	ids []string
}

func (f *forgets) Forget(id spiffe.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ids = append(f.ids, id.String())
}

func (f *forgets) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ids...)
}

func newManager(t *testing.T) (*Manager, *forgets) {
	f := &forgets{}
	m := New(Config{
		Proxy: proxy.Config{
			Node: "node-a", TrustDomain: "cluster.local", State: state.New(state.Options{}), Certs: noCerts{},
			TrustBundle: x509.NewCertPool,
		},
		Identities: f,
	})
	t.Cleanup(m.Close)
	return m, f
}

// open returns a new descriptor of the named test namespace, as ZDS hands
// one over (the Manager owns and closes it).
func open(t *testing.T, name string) *os.File {
	t.Helper()
	f, err := netns.OpenName(name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func newNS(t *testing.T, name string) *os.File {
	t.Helper()
	ns := netnstest.New(t, prefix+name)
	err := netns.Do(ns, func() error {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return err
		}
		return setUp(lo.Name)
	})
	if err != nil {
		t.Fatalf("bringing lo up in %s: %v", name, err)
	}
	return ns
}

// setUp brings a link up in the current thread's namespace.
func setUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// listening reports whether something listens on port on 127.0.0.1 in
// ns: the connection is not refused. (The proxy resets connections that
// were not redirected, sometimes before connect returns.)
func listening(ns *os.File, port int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := netns.DialIn(ctx, ns, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return !errors.Is(err, syscall.ECONNREFUSED)
	}
	c.Close()
	return true
}

func allListening(ns *os.File) error {
	for _, p := range []int{OutboundPort, InboundPort, HBONEPort} {
		if !listening(ns, p) {
			return fmt.Errorf("port %d not listening", p)
		}
	}
	return nil
}

func noneListening(ns *os.File) error {
	for _, p := range []int{OutboundPort, InboundPort, HBONEPort} {
		if listening(ns, p) {
			return fmt.Errorf("port %d still listening", p)
		}
	}
	return nil
}

func add(m *Manager, uid, name, sa string, ns *os.File) error {
	return m.AddPod(context.Background(), zds.WorkloadAdd{UID: uid, Name: name, Namespace: "ns", ServiceAccount: sa, Netns: ns})
}

func TestSocketsOptions(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := newNS(t, "opts")
	s := Sockets(ns, Mark)
	ln, err := s.Listen(context.Background(), "tcp", "[::]:15001")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark, reuse, proto int
	var gerr error
	_ = rc.Control(func(fd uintptr) {
		if mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK); gerr != nil {
			return
		}
		if reuse, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT); gerr != nil {
			return
		}
		proto, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
	})
	if gerr != nil {
		t.Fatal(gerr)
	}
	if mark != Mark || reuse != 1 || proto != unix.IPPROTO_TCP {
		t.Errorf("listener: mark %#x reuseport %d protocol %d; want %#x, 1, %d (TCP, not MPTCP)", mark, reuse, proto, Mark, unix.IPPROTO_TCP)
	}
	// A second ztunnel can bind beside it.
	ln2, err := Sockets(ns, Mark).Listen(context.Background(), "tcp", "[::]:15001")
	if err != nil {
		t.Fatalf("second listener with SO_REUSEPORT: %v", err)
	}
	ln2.Close()
	// Dialed sockets carry the mark.
	srv, err := s.Listen(context.Background(), "tcp", "127.0.0.1:9000")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := s.Dial(context.Background(), "tcp", "127.0.0.1:9000")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	crc, _ := c.(syscall.Conn).SyscallConn()
	_ = crc.Control(func(fd uintptr) { mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if gerr != nil || mark != Mark {
		t.Errorf("dialed socket mark %#x (%v), want %#x", mark, gerr, Mark)
	}
}

func TestManagerLifecycle(t *testing.T) {
	netnstest.RequireRoot(t)
	ns1 := newNS(t, "p1")
	ns2 := newNS(t, "p2")
	nsOther := newNS(t, "p3")
	m, f := newManager(t)

	if err := add(m, "u1", "p1", "sa", open(t, prefix+"p1")); err != nil {
		t.Fatal(err)
	}
	if err := allListening(ns1); err != nil {
		t.Fatalf("after add: %v", err)
	}
	first := m.pods["u1"].proxy

	// Re-add with the same namespace and details: the proxy is kept.
	if err := add(m, "u1", "p1", "sa", open(t, prefix+"p1")); err != nil {
		t.Fatal(err)
	}
	if m.pods["u1"].proxy != first {
		t.Error("re-add of an unchanged pod replaced its proxy")
	}
	// Re-add in another namespace (pod sandbox recreated): replaced.
	if err := add(m, "u1", "p1", "sa", open(t, prefix+"p2")); err != nil {
		t.Fatal(err)
	}
	if m.pods["u1"].proxy == first {
		t.Error("re-add in a new namespace kept the old proxy")
	}
	if err := noneListening(ns1); err != nil {
		t.Errorf("old namespace: %v", err)
	}
	if err := allListening(ns2); err != nil {
		t.Errorf("new namespace: %v", err)
	}
	if got := f.list(); len(got) != 0 {
		t.Errorf("identity forgotten while still in use: %v", got)
	}

	// A second pod with the same identity, then a snapshot without u1.
	if err := add(m, "u3", "p3", "sa", open(t, prefix+"p3")); err != nil {
		t.Fatal(err)
	}
	if n := len(m.Pods()); n != 2 {
		t.Fatalf("%d pods, want 2", n)
	}
	if err := m.KeepPod(context.Background(), "u3"); err != nil {
		t.Fatal(err)
	}
	if err := m.SnapshotDone(context.Background(), []string{"u3"}); err != nil {
		t.Fatal(err)
	}
	if err := noneListening(ns2); err != nil {
		t.Errorf("pod dropped by snapshot: %v", err)
	}
	if got := f.list(); len(got) != 0 {
		t.Errorf("identity forgotten while u3 has it: %v", got)
	}
	if err := m.DelPod(context.Background(), "u3"); err != nil {
		t.Fatal(err)
	}
	if err := noneListening(nsOther); err != nil {
		t.Errorf("after del: %v", err)
	}
	if got := f.list(); len(got) != 1 || got[0] != "spiffe://cluster.local/ns/ns/sa/sa" {
		t.Errorf("forgotten identities %v, want the pods' one once", got)
	}
	if err := m.DelPod(context.Background(), "unknown"); err != nil {
		t.Errorf("del of unknown pod: %v", err)
	}

	// Listening fails (port taken without SO_REUSEPORT): the add fails.
	blocker, err := netns.ListenIn(context.Background(), ns1, "tcp", "[::]:15006")
	if err != nil {
		t.Fatal(err)
	}
	err = add(m, "u1", "p1", "sa", open(t, prefix+"p1"))
	blocker.Close()
	if err == nil || len(m.Pods()) != 0 {
		t.Fatalf("add with port 15006 taken: %v, pods %v", err, m.Pods())
	}
	if err := noneListening(ns1); err != nil {
		t.Errorf("failed add left listeners: %v", err)
	}

	m.Close()
	if err := add(m, "u1", "p1", "sa", open(t, prefix+"p1")); !errors.Is(err, ErrClosed) {
		t.Errorf("add after close: %v", err)
	}
}
