package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/route"
)

func TestCheckOutbound(t *testing.T) {
	v := view(t)
	client := PodWorkload(v, Pod{UID: "c1//Pod/a/client"})
	own := DefaultOwnEndpoints(func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("172.30.0.10")} })
	ap := netip.MustParseAddrPort
	hbone := func(authority string) Outbound {
		return Outbound{Decision: route.Decision{Kind: route.HBONE, Target: ap("10.1.0.2:15008"), Authority: ap(authority)}}
	}
	pass := func(target string) Outbound {
		return Outbound{Decision: route.Decision{Kind: route.Passthrough, Target: ap(target)}}
	}
	for _, tc := range []struct {
		name string
		out  Outbound
		pod  bool // the source pod's workload is known
		self bool
	}{
		{"hbone to an app port", hbone("10.1.0.2:8080"), true, false},
		{"hbone authority 15006 (inbound capture)", hbone("10.1.0.2:15006"), true, true},
		{"hbone authority 15001 (outbound capture)", hbone("10.1.0.2:15001"), true, true},
		{"hbone authority 15008 (nested HBONE)", hbone("10.1.0.2:15008"), true, true},
		{"hbone authority 15053 (DNS)", hbone("[fd00::2]:15053"), true, true},
		{"passthrough outside the mesh on 15001", pass("192.0.2.9:15001"), true, false},
		{"passthrough outside the mesh on 443", pass("192.0.2.9:443"), true, false},
		{"passthrough to the pod's own address on 15001", pass("10.1.0.1:15001"), true, true},
		{"passthrough to the pod's own address, pod unknown: a workload", pass("10.1.0.1:15006"), false, true},
		{"passthrough to a plaintext workload on 15006", pass("10.1.0.3:15006"), true, true},
		{"passthrough to a plaintext workload's app port", pass("10.1.0.3:80"), true, false},
		{"passthrough to loopback 15001", pass("127.0.0.1:15001"), true, true},
		{"passthrough to ::1 15008", pass("[::1]:15008"), true, true},
		{"passthrough to ztunnel's metrics", pass("172.30.0.10:15020"), true, true},
		{"passthrough to ztunnel's readiness", pass("172.30.0.10:15021"), true, true},
		{"passthrough to ztunnel's admin at loopback", pass("127.0.0.1:15000"), true, true},
		{"passthrough to another host's 15020", pass("172.30.0.11:15020"), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pw := client
			if !tc.pod {
				pw = nil
			}
			err := CheckOutbound(own, v, "", pw, tc.out)
			if got := errors.Is(err, ErrSelfCall); got != tc.self {
				t.Fatalf("CheckOutbound = %v; want self call %v", err, tc.self)
			}
		})
	}
}

func TestCheckInbound(t *testing.T) {
	own := DefaultOwnEndpoints(nil)
	for port, self := range map[uint16]bool{15001: true, 15006: true, 15008: true, 15053: true, 8080: false, 15020: false, 80: false} {
		err := CheckInbound(own, netip.AddrPortFrom(netip.MustParseAddr("10.1.0.2"), port))
		if errors.Is(err, ErrSelfCall) != self {
			t.Errorf("port %d: %v; want self call %v", port, err, self)
		}
	}
}

// fakeDialer connects to nothing: it returns one end of a pipe whose local
// address is given, or blocks until ctx ends.
type fakeDialer struct {
	local net.Addr
	block bool
}

type addrConn struct {
	net.Conn
	local net.Addr
}

func (c addrConn) LocalAddr() net.Addr { return c.local }

func (d fakeDialer) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	if d.block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	a, _ := net.Pipe()
	return addrConn{Conn: a, local: d.local}, nil
}

func TestOwnSocketsRecognisesItsConnections(t *testing.T) {
	o := NewOwnSockets()
	local := &net.TCPAddr{IP: net.ParseIP("10.1.0.1"), Port: 40000}
	c, err := o.Dialer(fakeDialer{local: local}).DialContext(context.Background(), "tcp", "10.1.0.1:15006")
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddrPort("10.1.0.1:15006")
	if !o.Check(netip.MustParseAddrPort("10.1.0.1:40000"), dst) {
		t.Fatal("own connection not recognised")
	}
	if o.Check(netip.MustParseAddrPort("10.1.0.1:40001"), dst) {
		t.Fatal("another source port taken for own")
	}
	if o.Check(netip.MustParseAddrPort("[::ffff:10.1.0.9]:40000"), dst) {
		t.Fatal("another address taken for own")
	}
	// v4-mapped forms match.
	if !o.Check(netip.MustParseAddrPort("[::ffff:10.1.0.1]:40000"), dst) {
		t.Fatal("v4-mapped remote not matched")
	}
	c.Close()
	c.Close()
	if o.Check(netip.MustParseAddrPort("10.1.0.1:40000"), dst) {
		t.Fatal("closed connection still recognised")
	}
	// Loopback local addresses repeat across pods: never recorded.
	lc, err := o.Dialer(fakeDialer{local: &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 40000}}).DialContext(context.Background(), "tcp", "127.0.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	if o.Check(netip.MustParseAddrPort("127.0.0.1:40000"), netip.MustParseAddrPort("127.0.0.1:15006")) {
		t.Fatal("loopback recorded")
	}
}

func TestOwnSocketsWaitsForAPendingDial(t *testing.T) {
	o := NewOwnSockets()
	o.wait = 5 * time.Second
	dst := netip.MustParseAddrPort("10.1.0.1:15008")
	remote := netip.MustParseAddrPort("10.1.0.2:41000")
	o.begin(dst) // a dial to dst is connecting
	var got bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); got = o.Check(remote, dst) }()
	// Check waits until the pending dial ends; it then finds the match.
	// The pause lets Check start waiting first: the race under test.
	time.Sleep(20 * time.Millisecond)
	o.end(dst, remote)
	wg.Wait()
	if !got {
		t.Fatal("connection whose dial was pending not recognised")
	}
	// No pending dial for the destination: no wait, no match.
	start := time.Now()
	if o.Check(netip.MustParseAddrPort("10.1.0.2:41001"), dst) {
		t.Fatal("unknown connection recognised")
	}
	if time.Since(start) > time.Second {
		t.Fatal("Check waited without a pending dial")
	}
	// A pending dial that never ends costs at most the wait.
	o.wait = 50 * time.Millisecond
	o.begin(dst)
	if o.Check(netip.MustParseAddrPort("10.1.0.2:41002"), dst) {
		t.Fatal("recognised without a match")
	}
}

func TestOwnSocketsFailedDial(t *testing.T) {
	o := NewOwnSockets()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := o.Dialer(fakeDialer{block: true}).DialContext(ctx, "tcp", "10.1.0.1:15008"); err == nil {
		t.Fatal("blocked dial succeeded")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.pending) != 0 || len(o.established) != 0 {
		t.Fatalf("failed dial left state: pending %v established %v", o.pending, o.established)
	}
}
