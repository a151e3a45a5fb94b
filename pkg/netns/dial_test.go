package netns_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
	"github.com/ambit-mesh/ambit/pkg/sockopt"
)

// unreachable is an address that, in a namespace from dialNS, resolves to
// a MAC address nobody has: SYNs sent there vanish, so connects hang until
// their deadline.
const unreachable = "10.99.0.2:80"

// dialNS creates a namespace with lo up and a veth pair v0/v1 (both ends
// inside, up), v0 holding 10.99.1.1/24 and the route to 10.99.0.0/24, and
// a permanent neighbour entry for 10.99.0.2 with a MAC that v1 drops.
func dialNS(t testing.TB, name string) *os.File {
	t.Helper()
	ns := netnstest.New(t, prefix+name)
	err := netns.Do(ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "v0"}, PeerName: "v1"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("adding veth pair: %w", err)
		}
		v0, err := netlink.LinkByName("v0")
		if err != nil {
			return err
		}
		v1, err := netlink.LinkByName("v1")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr("10.99.1.1/24")
		if err := netlink.AddrAdd(v0, addr); err != nil {
			return err
		}
		for _, l := range []netlink.Link{v0, v1} {
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		_, dst, _ := net.ParseCIDR("10.99.0.0/24")
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: v0.Attrs().Index, Dst: dst}); err != nil {
			return err
		}
		return netlink.NeighAdd(&netlink.Neigh{
			LinkIndex: v0.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP("10.99.0.2"), HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 0x99, 0x02},
		})
	})
	if err != nil {
		t.Fatalf("setting up %s: %v", name, err)
	}
	return ns
}

// sockNS returns the namespace ID of a connection's socket (SIOCGSKNS).
func sockNS(t *testing.T, c net.Conn) netns.ID {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var nsfd int
	var ierr error
	_ = rc.Control(func(fd uintptr) { nsfd, ierr = unix.IoctlRetInt(int(fd), unix.SIOCGSKNS) })
	if ierr != nil {
		t.Fatalf("SIOCGSKNS: %v", ierr)
	}
	f := os.NewFile(uintptr(nsfd), "socket netns")
	defer f.Close()
	id, err := netns.IDOf(f)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestDialInNamespace(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := dialNS(t, "dial")
	nsID, err := netns.IDOf(ns)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// 10.99.1.1 exists only inside ns: a socket from anywhere else could
	// not reach this listener.
	ln, err := netns.ListenIn(ctx, ns, "tcp", "10.99.1.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type accepted struct {
		remote net.Addr
		err    error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acc <- accepted{err: err}
			return
		}
		defer c.Close()
		_, err = c.Write([]byte("hi"))
		acc <- accepted{remote: c.RemoteAddr(), err: err}
	}()

	const mark = 0x539
	s := netns.Sockets{NS: ns, Dialer: net.Dialer{Control: sockopt.MarkControl(mark)}}
	c, err := s.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	if _, ok := c.(*net.TCPConn); !ok {
		t.Errorf("Dial returned %T, want *net.TCPConn", c)
	}
	a := <-acc
	if a.err != nil {
		t.Fatal(a.err)
	}
	if a.remote.String() != c.LocalAddr().String() {
		t.Errorf("peer saw %v, dialer's local address %v", a.remote, c.LocalAddr())
	}
	if got := sockNS(t, c); got != nsID {
		t.Errorf("dialed socket is in %v, want %v", got, nsID)
	}
	buf := make([]byte, 2)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q, %v", buf, err)
	}
	rc, _ := c.(syscall.Conn).SyscallConn()
	var got int
	var gerr error
	_ = rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if gerr != nil || got != mark {
		t.Errorf("SO_MARK %#x (%v), want %#x set by the Dialer's Control before connect", got, gerr, mark)
	}

	// A Control error aborts the dial before connect.
	boom := errors.New("control says no")
	s.Dialer.Control = func(string, string, syscall.RawConn) error { return boom }
	if _, err := s.Dial(ctx, "tcp", ln.Addr().String()); !errors.Is(err, boom) {
		t.Errorf("Dial with a failing Control = %v, want it wrapped", err)
	}
}

func TestDialErrors(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := dialNS(t, "dialerr")
	ctx := context.Background()
	s := netns.Sockets{NS: ns}

	_, err := s.Dial(ctx, "tcp", "127.0.0.1:1")
	if !errors.Is(err, unix.ECONNREFUSED) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial to a closed port = %v, want ECONNREFUSED", err)
	}
	want := "dialing tcp 127.0.0.1:1 from network namespace " + ns.Name() + ": "
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q does not start with %q", err, want)
	}
	var ne net.Error
	if !errors.As(err, &ne) || ne.Timeout() {
		t.Errorf("refused dial: net.Error %v, Timeout must be false", ne)
	}
	for _, addr := range []string{"localhost:80", "10.0.0.1:http", "[fe80::1%eth0]:80"} {
		if _, err := s.Dial(ctx, "tcp", addr); !errors.Is(err, netns.ErrNotLiteralIP) {
			t.Errorf("Dial(%q) = %v, want ErrNotLiteralIP", addr, err)
		}
	}
	if _, err := s.Dial(ctx, "tcp6", "127.0.0.1:1"); err == nil || errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("tcp6 dial to an IPv4 address = %v, want a family error", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Dial(cctx, "tcp", unreachable); !errors.Is(err, context.Canceled) {
		t.Errorf("dial with a cancelled context = %v, want context.Canceled", err)
	}
}

// TestDialCancelAndTimeout checks that cancellation and each kind of
// deadline end a connect to an unreachable address promptly.
func TestDialCancelAndTimeout(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := dialNS(t, "dialto")
	const after = 200 * time.Millisecond
	const slack = 2 * time.Second // generous for a loaded CI machine

	check := func(t *testing.T, err error, took time.Duration, target error, timeout bool) {
		t.Helper()
		if !errors.Is(err, target) {
			t.Fatalf("err = %v, want %v", err, target)
		}
		var ne net.Error
		if !errors.As(err, &ne) || ne.Timeout() != timeout {
			t.Errorf("err %v: net.Error Timeout() should be %v", err, timeout)
		}
		if timeout && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("err %v does not match os.ErrDeadlineExceeded", err)
		}
		if took < after-10*time.Millisecond || took > after+slack {
			t.Errorf("dial ended after %v, want about %v", took, after)
		}
	}
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		timer := time.AfterFunc(after, cancel)
		defer timer.Stop()
		start := time.Now()
		_, err := (&netns.Sockets{NS: ns}).Dial(ctx, "tcp", unreachable)
		check(t, err, time.Since(start), context.Canceled, false)
	})
	t.Run("context deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), after)
		defer cancel()
		start := time.Now()
		_, err := (&netns.Sockets{NS: ns}).Dial(ctx, "tcp", unreachable)
		check(t, err, time.Since(start), context.DeadlineExceeded, true)
	})
	t.Run("dialer timeout", func(t *testing.T) {
		start := time.Now()
		_, err := (&netns.Sockets{NS: ns, Dialer: net.Dialer{Timeout: after}}).Dial(context.Background(), "tcp", unreachable)
		check(t, err, time.Since(start), context.DeadlineExceeded, true)
	})
	t.Run("dialer deadline", func(t *testing.T) {
		start := time.Now()
		_, err := (&netns.Sockets{NS: ns, Dialer: net.Dialer{Deadline: start.Add(after)}}).Dial(context.Background(), "tcp", unreachable)
		check(t, err, time.Since(start), context.DeadlineExceeded, true)
	})
}

// Thread bound of TestDialThreadBound, stated: GOMAXPROCS*2 + 16.
func threadBound() int { return runtime.GOMAXPROCS(0)*2 + 16 }

const threadChildEnv = "AMBIT_NETNS_THREAD_CHILD"

// TestDialThreadBound makes 3,000 concurrent dials to an unreachable
// address with a 2 s timeout and checks that the process's OS threads stay
// under threadBound() during and after, and that goroutines and open files
// return to their baseline. It runs in a child process so that threads
// other tests created (Go never frees idle threads) do not count.
func TestDialThreadBound(t *testing.T) {
	netnstest.RequireRoot(t)
	if os.Getenv(threadChildEnv) != "1" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestDialThreadBound$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), threadChildEnv+"=1")
		out, err := cmd.CombinedOutput()
		t.Logf("child:\n%s", out)
		if err != nil {
			t.Fatalf("child test: %v", err)
		}
		if !bytes.Contains(out, []byte("--- PASS: TestDialThreadBound")) {
			t.Fatal("child did not run the test")
		}
		return
	}

	ns := dialNS(t, "threads")
	s := netns.Sockets{NS: ns, Dialer: net.Dialer{Timeout: 2 * time.Second}}
	// Start the socket pool before taking the baseline.
	if c, err := s.Dial(context.Background(), "tcp", "127.0.0.1:1"); err == nil {
		c.Close()
	}
	baseG, baseFD := runtime.NumGoroutine(), openFiles(t)
	t.Logf("baseline: %d threads, %d goroutines, %d open files; bound %d threads (GOMAXPROCS %d * 2 + 16)",
		threads(t), baseG, baseFD, threadBound(), runtime.GOMAXPROCS(0))

	const n = 3000
	var (
		peak    int
		done    = make(chan struct{})
		sampled = make(chan struct{})
	)
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if th := threads(t); th > peak {
				peak = th
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		timeouts int
		other    []error
	)
	start := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := s.Dial(context.Background(), "tcp", unreachable)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				c.Close()
				other = append(other, errors.New("dial to an unreachable address succeeded"))
			case errors.Is(err, context.DeadlineExceeded):
				timeouts++
			default:
				other = append(other, err)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(done)
	<-sampled
	t.Logf("%d dials ended in %v: %d timeouts; peak %d threads", n, took, timeouts, peak)
	if len(other) > 0 {
		t.Errorf("%d dials failed otherwise, first: %v", len(other), other[0])
	}
	if peak >= threadBound() {
		t.Errorf("peak %d threads, want < %d", peak, threadBound())
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		g, fd, th := runtime.NumGoroutine(), openFiles(t), threads(t)
		if g <= baseG && fd <= baseFD && th < threadBound() {
			t.Logf("after: %d threads, %d goroutines, %d open files", th, g, fd)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the dials: %d goroutines (baseline %d), %d open files (baseline %d), %d threads (bound %d)",
				g, baseG, fd, baseFD, th, threadBound())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func threads(t testing.TB) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

func openFiles(t testing.TB) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// BenchmarkDial compares a dial through the socket pool (Sockets.Dial)
// with the whole dial run inside Do, to a listener in the namespace.
func BenchmarkDial(b *testing.B) {
	netnstest.RequireRoot(b)
	ns := dialNS(b, "bench")
	ln, err := netns.ListenIn(context.Background(), ns, "tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := ln.Addr().String()
	closeRST := func(c net.Conn) {
		_ = c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT: ports are not exhausted
		c.Close()
	}
	ctx := context.Background()
	b.Run("pool", func(b *testing.B) {
		s := netns.Sockets{NS: ns}
		for b.Loop() {
			c, err := s.Dial(ctx, "tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			closeRST(c)
		}
	})
	b.Run("do", func(b *testing.B) {
		var d net.Dialer
		for b.Loop() {
			var c net.Conn
			err := netns.Do(ns, func() error {
				var err error
				c, err = d.DialContext(ctx, "tcp", addr)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			closeRST(c)
		}
	})
}
