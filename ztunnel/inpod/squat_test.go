package inpod

import (
	"context"
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
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
)

// squat binds address in ns the way an app in the pod could: SO_REUSEPORT,
// plain TCP, no mark.
func squat(t *testing.T, ns *os.File, network, address string) net.Listener {
	t.Helper()
	s := netns.Sockets{NS: ns, ListenConfig: net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
			return err
		}
		return serr
	}}}
	s.ListenConfig.SetMultipathTCP(false)
	ln, err := s.Listen(context.Background(), network, address)
	if err != nil {
		t.Fatalf("squatter binding %s: %v", address, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// drain accepts, without blocking, every connection already queued on ln
// and returns how many there were.
func drain(t *testing.T, ln net.Listener) int {
	t.Helper()
	rc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	_ = rc.Control(func(fd uintptr) {
		for {
			c, _, err := unix.Accept4(int(fd), unix.SOCK_CLOEXEC)
			if err != nil {
				return
			}
			unix.Close(c)
			n++
		}
	})
	return n
}

// connectN makes n connections from ns to address; each has completed its
// handshake, so it sits in the accept queue of the listener the kernel
// chose. It returns how many dials failed, not counting resets: ztunnel's
// proxy resets connections that were not redirected, sometimes before the
// dial returns.
func connectN(t *testing.T, ns *os.File, address string, n int) int {
	t.Helper()
	failed := 0
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := netns.DialIn(ctx, ns, "tcp", address)
		cancel()
		if errors.Is(err, unix.ECONNRESET) {
			continue
		}
		if err != nil {
			failed++
			continue
		}
		c.Close()
	}
	return failed
}

// requireGuard skips (fails under CI=true) when this kernel or process
// cannot load both guards.
func requireGuard(t *testing.T, ns *os.File) {
	t.Helper()
	check := func(what string, err error) {
		t.Helper()
		if errors.Is(err, ErrGuardUnsupported) {
			netnstest.SkipOrFail(t, "%s: %v", what, err)
		}
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	for _, reuseport := range []bool{true, false} {
		ln, err := listen(context.Background(), Sockets(ns, Mark), 15999)
		if err != nil {
			t.Fatal(err)
		}
		if reuseport {
			check("reuseport guard", guardListener(ln))
		} else {
			l, err := guardNamespace(ns, map[int]net.Listener{15999: ln})
			check("SK_LOOKUP guard", err)
			l.Close()
		}
		ln.Close()
	}
}

// TestReuseportGuard binds ztunnel's listener, then a squatter beside it
// in the same SO_REUSEPORT group: with the guard every connection reaches
// ztunnel's socket; without it the squatter takes some.
func TestReuseportGuard(t *testing.T) {
	ns := newNS(t, "guard")
	requireGuard(t, ns)
	const n = 20
	for _, guarded := range []bool{true, false} {
		t.Run(fmt.Sprintf("guarded=%v", guarded), func(t *testing.T) {
			zt, err := listen(context.Background(), Sockets(ns, Mark), HBONEPort)
			if err != nil {
				t.Fatal(err)
			}
			defer zt.Close()
			if guarded {
				if err := guardListener(zt); err != nil {
					t.Fatal(err)
				}
			}
			sq := squat(t, ns, "tcp", fmt.Sprintf("[::]:%d", HBONEPort))
			failed := connectN(t, ns, fmt.Sprintf("127.0.0.1:%d", HBONEPort), n)
			toZt, toSq := drain(t, zt), drain(t, sq)
			t.Logf("%d connections: %d to ztunnel, %d to the squatter, %d failed", n, toZt, toSq, failed)
			if guarded && (toZt != n || toSq != 0 || failed != 0) {
				t.Errorf("guarded: ztunnel got %d of %d, squatter %d, %d failed; want all to ztunnel", toZt, n, toSq, failed)
			}
			if !guarded && toSq == 0 {
				t.Errorf("unguarded: the squatter got none of %d (the test cannot tell guarded from unguarded)", n)
			}
			if guarded {
				// Once ztunnel's listener is gone the squatter still gets
				// nothing: the group's program drops what it cannot select.
				zt.Close()
				failed := connectN(t, ns, fmt.Sprintf("127.0.0.1:%d", HBONEPort), 3)
				if got := drain(t, sq); got != 0 || failed != 3 {
					t.Errorf("after ztunnel's listener closed: squatter got %d, %d of 3 dials failed; want 0 and 3", got, failed)
				}
				sq.Close()
			}
		})
	}
}

// foreignEvents records OnForeignListener calls.
type foreignEvents struct {
	mu     sync.Mutex
	events []string
}

func (f *foreignEvents) hook(pod proxy.Pod, port, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, fmt.Sprintf("%s %d=%d", pod.Name, port, n))
}

func (f *foreignEvents) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.events...)
}

// waitEvent polls until event was recorded or the deadline passes.
func (f *foreignEvents) wait(t *testing.T, event string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		for _, e := range f.list() {
			if e == event {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q within %v; events %v", event, within, f.list())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func squatManager(t *testing.T, interval time.Duration, noGuard bool) (*Manager, *foreignEvents) {
	t.Helper()
	m, _ := newManager(t)
	ev := &foreignEvents{}
	m.cfg.ForeignListenerInterval = interval
	m.cfg.NoListenerGuard = noGuard
	m.cfg.OnForeignListener = ev.hook
	return m, ev
}

// TestManagerSquatter runs the in-pod listeners through the Manager and
// squatters beside them, each bound with SO_REUSEPORT by an app in the pod:
// [::]:15008 (joins ztunnel's SO_REUSEPORT group), 0.0.0.0:15001 (an IPv4
// group of its own, which the kernel prefers for IPv4) and 127.0.0.1:15006
// (a specific address, preferred over wildcards). Guarded, every
// connection reaches ztunnel; unguarded, each squatter takes some.
// Detection reports each squatter within the scan interval through
// OnForeignListener, and DelPod ends the watch.
func TestManagerSquatter(t *testing.T) {
	const interval = 300 * time.Millisecond
	const within = 3 * interval // one interval plus scheduling slack
	const n = 20
	squatters := []struct{ network, address string }{
		{"tcp", fmt.Sprintf("[::]:%d", HBONEPort)},
		{"tcp4", fmt.Sprintf("0.0.0.0:%d", OutboundPort)},
		{"tcp4", fmt.Sprintf("127.0.0.1:%d", InboundPort)},
	}
	for _, guarded := range []bool{true, false} {
		t.Run(fmt.Sprintf("guarded=%v", guarded), func(t *testing.T) {
			name := fmt.Sprintf("sq%v", guarded)
			ns := newNS(t, name)
			if guarded {
				requireGuard(t, ns)
			}
			m, ev := squatManager(t, interval, !guarded)
			if err := add(m, "u-"+name, name, "sa", open(t, prefix+name)); err != nil {
				t.Fatal(err)
			}
			var ports []int
			for _, sq := range squatters {
				ln := squat(t, ns, sq.network, sq.address)
				port := ln.Addr().(*net.TCPAddr).Port
				ports = append(ports, port)
				ev.wait(t, fmt.Sprintf("%s %d=1", name, port), within)

				failed := connectN(t, ns, fmt.Sprintf("127.0.0.1:%d", port), n)
				toSq := drain(t, ln)
				t.Logf("squatter on %s: %d of %d connections, %d failed", sq.address, toSq, n, failed)
				if guarded && (toSq != 0 || failed != 0) {
					t.Errorf("guarded: squatter on %s got %d of %d, %d failed; want 0 and 0", sq.address, toSq, n, failed)
				}
				if !guarded && toSq == 0 {
					t.Errorf("unguarded: squatter on %s got none of %d (the test cannot tell guarded from unguarded)", sq.address, n)
				}
			}
			// A squatter that leaves is reported gone.
			last := squat(t, ns, "tcp6", fmt.Sprintf("[::1]:%d", HBONEPort))
			ev.wait(t, fmt.Sprintf("%s %d=2", name, HBONEPort), within)
			last.Close()
			ev.wait(t, fmt.Sprintf("%s %d=1", name, HBONEPort), within)

			if err := m.DelPod(context.Background(), "u-"+name); err != nil {
				t.Fatal(err)
			}
			for _, port := range ports {
				ev.wait(t, fmt.Sprintf("%s %d=0", name, port), 0)
			}
			after := len(ev.list())
			// The watch has ended (DelPod waits for it): the squatters are
			// still there, yet no scan reports them again.
			time.Sleep(within)
			if got := ev.list(); len(got) != after {
				t.Errorf("events after DelPod: %v", got[after:])
			}
		})
	}
}

// TestReuseportGuardTakeover checks the hand-over contract: a second
// guarded listener joining the group (a new ztunnel) takes every new
// connection; the first keeps what it had accepted.
func TestReuseportGuardTakeover(t *testing.T) {
	ns := newNS(t, "takeover")
	requireGuard(t, ns)
	addr := fmt.Sprintf("127.0.0.1:%d", HBONEPort)
	old, err := listen(context.Background(), Sockets(ns, Mark), HBONEPort)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := guardListener(old); err != nil {
		t.Fatal(err)
	}
	if failed := connectN(t, ns, addr, 5); failed != 0 {
		t.Fatalf("%d dials failed before the take-over", failed)
	}
	successor, err := listen(context.Background(), Sockets(ns, Mark), HBONEPort)
	if err != nil {
		t.Fatal(err)
	}
	defer successor.Close()
	if err := guardListener(successor); err != nil {
		t.Fatal(err)
	}
	const n = 20
	failed := connectN(t, ns, addr, n)
	toOld, toNew := drain(t, old), drain(t, successor)
	t.Logf("old listener: %d (5 from before the take-over), successor: %d of %d, %d failed", toOld, toNew, n, failed)
	if toOld != 5 || toNew != n || failed != 0 {
		t.Errorf("old got %d (want the 5 from before), successor %d of %d, %d failed", toOld, toNew, n, failed)
	}
}

// TestNamespaceGuardTakeover checks the SK_LOOKUP guard's hand-over: the
// program attached last (a new ztunnel) takes every new connection,
// SO_REUSEPORT siblings included; once its listener or its link is gone,
// the earlier one serves again.
func TestNamespaceGuardTakeover(t *testing.T) {
	ns := newNS(t, "nstakeover")
	requireGuard(t, ns)
	addr := fmt.Sprintf("127.0.0.1:%d", HBONEPort)
	const n = 10
	bind := func() net.Listener {
		t.Helper()
		ln, err := listen(context.Background(), Sockets(ns, Mark), HBONEPort)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	old := bind()
	oldLink, err := guardNamespace(ns, map[int]net.Listener{HBONEPort: old})
	if err != nil {
		t.Fatal(err)
	}
	defer oldLink.Close()
	successor := bind()
	newLink, err := guardNamespace(ns, map[int]net.Listener{HBONEPort: successor})
	if err != nil {
		t.Fatal(err)
	}
	expect := func(step string, wantOld, wantNew int) {
		t.Helper()
		failed := connectN(t, ns, addr, n)
		gotOld, gotNew := drain(t, old), drain(t, successor)
		if gotOld != wantOld || gotNew != wantNew || failed != 0 {
			t.Errorf("%s: old %d, successor %d, %d failed; want %d, %d, 0", step, gotOld, gotNew, failed, wantOld, wantNew)
		}
	}
	expect("both attached", 0, n)
	newLink.Close()
	expect("successor's link closed", n, 0)
	newLink, err = guardNamespace(ns, map[int]net.Listener{HBONEPort: successor})
	if err != nil {
		t.Fatal(err)
	}
	defer newLink.Close()
	expect("successor attached again", 0, n)
	successor.Close()
	expect("successor's listener closed", n, 0)
}

// TestForeignScan runs one scan over a namespace holding ztunnel's own
// listener, another ztunnel's (marked) and a squatter's: only the squatter
// is foreign.
func TestForeignScan(t *testing.T) {
	ns := newNS(t, "scan")
	own, err := listen(context.Background(), Sockets(ns, Mark), HBONEPort)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	peer, err := listen(context.Background(), Sockets(ns, Mark), HBONEPort)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	sq := squat(t, ns, "tcp4", fmt.Sprintf("0.0.0.0:%d", HBONEPort))
	inode, err := socketInode(own)
	if err != nil {
		t.Fatal(err)
	}
	m, ev := squatManager(t, time.Hour, true)
	stop := m.startForeignWatch(proxy.Pod{Name: "scan"}, ns, []ownListener{{port: HBONEPort, inode: inode}})
	ev.wait(t, fmt.Sprintf("scan %d=1", HBONEPort), 5*time.Second) // the first scan runs at once
	stop()
	if got, want := ev.list(), []string{fmt.Sprintf("scan %d=1", HBONEPort), fmt.Sprintf("scan %d=0", HBONEPort)}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events %v, want %v (the marked listener is not foreign; stop resets the count)", got, want)
	}
	sq.Close()
}
