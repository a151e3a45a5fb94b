//go:build linux

package zds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"istio.io/istio/pkg/zdsapi"
)

// refusals records OnRefused calls.
type refusals struct {
	mu      sync.Mutex
	peers   []Peer
	reasons []error
}

func (r *refusals) hook(p Peer, reason error) {
	r.mu.Lock()
	r.peers = append(r.peers, p)
	r.reasons = append(r.reasons, reason)
	r.mu.Unlock()
}

func (r *refusals) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reasons)
}

// waitCount polls until the hook saw at least n refusals.
func (r *refusals) waitCount(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for r.count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d refusals reported, want %d", r.count(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (r *refusals) last() (Peer, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peers[len(r.peers)-1], r.reasons[len(r.reasons)-1]
}

func startServerCfg(t *testing.T, cfg ServerConfig) *Server {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

// expectAddOnly asserts that the live ztunnel receives an add for uid and
// saw no new snapshot (it was not disconnected) before it.
func expectAddOnly(t *testing.T, s *Server, h *recHandler, ns *os.File, uid string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	if err := s.AddPod(ctx, Pod{UID: uid, Name: uid, Namespace: "default", Netns: ns}); err != nil {
		t.Fatalf("AddPod %s to the live ztunnel: %v", uid, err)
	}
	if e := h.next(t); e.kind != "add" || e.uid != uid {
		t.Fatalf("live ztunnel got %+v, want only the add of %s (a snapshot means it was reconnected)", e, uid)
	}
}

// dialAsUID connects to path with the calling thread's effective uid set
// to uid; SO_PEERCRED then reports uid. Only this thread's credentials
// change (a raw setresuid; Go's syscall.Setresuid would change every
// thread), and they are restored before the thread is released. Needs root.
func dialAsUID(path string, uid int) (*net.UnixConn, error) {
	type result struct {
		c   *net.UnixConn
		err error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		keep := ^uintptr(0) // -1: leave unchanged
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, keep, uintptr(uid), keep); e != 0 {
			runtime.UnlockOSThread()
			res <- result{err: fmt.Errorf("setresuid(-1, %d, -1): %w", uid, e)}
			return
		}
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, keep, 0, keep); e != 0 {
			// The thread keeps the foreign uid: never unlock it, so the
			// runtime discards it when this goroutine exits.
			res <- result{c, fmt.Errorf("restoring euid 0: %w", e)}
			return
		}
		runtime.UnlockOSThread()
		res <- result{c, err}
	}()
	r := <-res
	return r.c, r.err
}

// worldDir returns a fresh directory anyone may traverse, removed at the
// end of the test.
func worldDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ambt-zds-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (it connects as another uid); CI must run it as root")
	}
	t.Skip("needs root: connects to the ZDS socket as another uid")
}

// TestRefusedConnectionsLeaveZtunnel: connections with a bad hello, no
// hello, or from a uid that is not allowed are refused without disturbing
// the connected ztunnel, which keeps receiving adds; a valid new ztunnel
// (a restart) still replaces it.
func TestRefusedConnectionsLeaveZtunnel(t *testing.T) {
	ns := openNetnsFile(t)
	src := &podSource{}
	src.set(Pod{UID: "p0", Name: "p0", Namespace: "default", Netns: ns})
	path := filepath.Join(worldDir(t), "ztunnel.sock")
	var refused refusals
	s := startServerCfg(t, ServerConfig{
		Path: path, Snapshot: src, AckTimeout: time.Second,
		AllowedUIDs: []uint32{0, uint32(os.Geteuid())}, OnRefused: refused.hook,
	})
	h := newRecHandler()
	stop := startClient(t, path, h)
	if e := h.next(t); e.kind != "add" || e.uid != "p0" {
		t.Fatalf("got %+v", e)
	}
	if e := h.next(t); e.kind != "snapshot" {
		t.Fatalf("got %+v", e)
	}
	waitReady(t, s)

	n := 0
	refusedWith := func(t *testing.T, want string) {
		t.Helper()
		n++
		refused.waitCount(t, n)
		p, reason := refused.last()
		if !errors.Is(reason, ErrRefused) || !strings.Contains(reason.Error(), want) {
			t.Fatalf("refusal reason %q, want ErrRefused mentioning %q", reason, want)
		}
		if p.PID != int32(os.Getpid()) {
			t.Fatalf("refused peer pid %d, want ours (%d)", p.PID, os.Getpid())
		}
		if got := s.Refused(); got != uint64(n) {
			t.Fatalf("Refused() = %d, want %d", got, n)
		}
	}

	t.Run("garbage hello", func(t *testing.T) {
		c := dialRaw(t, path)
		sendRaw(t, c, []byte{0xff, 0xff})
		expectEOF(t, c)
		refusedWith(t, "bad hello")
		expectAddOnly(t, s, h, ns, "p1")
	})
	t.Run("hello with version 0", func(t *testing.T) {
		c := dialRaw(t, path)
		sendRaw(t, c, []byte{0x08, 0x00}) // version: NOT_USED, explicitly
		expectEOF(t, c)
		refusedWith(t, "unsupported version")
		expectAddOnly(t, s, h, ns, "p2")
	})
	t.Run("no hello", func(t *testing.T) {
		c := dialRaw(t, path)
		expectEOF(t, c)
		refusedWith(t, "no hello within")
		expectAddOnly(t, s, h, ns, "p3")
	})
	t.Run("foreign uid with a valid hello", func(t *testing.T) {
		requireRoot(t)
		// The socket's mode (0600, owner only) is the first defence; open
		// it up so that the uid policy is what refuses.
		if err := os.Chmod(path, 0o666); err != nil {
			t.Fatal(err)
		}
		c, err := dialAsUID(path, 65534)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The hello may be written before or after the server closes.
		_, _, _ = c.WriteMsgUnix(mustMarshal(t, &zdsapi.ZdsHello{Version: zdsapi.Version_V1}), nil, nil)
		expectEOF(t, c)
		refusedWith(t, "peer uid 65534 is not allowed")
		expectAddOnly(t, s, h, ns, "p4")
	})

	// A restarted ztunnel (valid peer, valid hello) replaces the old one
	// and gets the snapshot.
	stop()
	h2 := newRecHandler()
	startClient(t, path, h2)
	for {
		e := h2.next(t)
		if e.kind == "snapshot" {
			if !strings.Contains(strings.Join(e.uids, ","), "p0") {
				t.Fatalf("restarted ztunnel's snapshot %v lacks p0", e.uids)
			}
			break
		}
	}
	waitReady(t, s)
	expectAddOnly(t, s, h2, ns, "p5")
}

// TestVerifyPeerRefuses: the VerifyPeer hook sees the connecting process
// and its error refuses the connection before any hello is read.
func TestVerifyPeerRefuses(t *testing.T) {
	path := sockPath(t)
	var refused refusals
	var seen Peer
	var mu sync.Mutex
	s := startServerCfg(t, ServerConfig{
		Path: path, Snapshot: &podSource{},
		VerifyPeer: func(p Peer) error {
			mu.Lock()
			seen = p
			mu.Unlock()
			return errors.New("not ztunnel's cgroup")
		},
		OnRefused: refused.hook,
	})
	c := dialRaw(t, path)
	// Refused at accept: the hello may find the connection closed already.
	_, _, _ = c.WriteMsgUnix(mustMarshal(t, &zdsapi.ZdsHello{Version: zdsapi.Version_V1}), nil, nil)
	expectEOF(t, c)
	refused.waitCount(t, 1)
	_, reason := refused.last()
	if !strings.Contains(reason.Error(), "not ztunnel's cgroup") {
		t.Fatalf("reason %q", reason)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen.PID != int32(os.Getpid()) || seen.UID != uint32(os.Geteuid()) {
		t.Fatalf("VerifyPeer saw %+v, want pid %d uid %d", seen, os.Getpid(), os.Geteuid())
	}
	if s.Connected() {
		t.Fatal("refused connection became current")
	}
}

// TestIdleFloodDoesNotBlockReconnect: 500 connections that never send a
// hello neither hold more than MaxPending server connections nor keep a
// restarted ztunnel out, although the hello timeout is far longer than the
// time the ztunnel takes to get in.
func TestIdleFloodDoesNotBlockReconnect(t *testing.T) {
	const flood = 500
	const ackTimeout = 30 * time.Second
	ns := openNetnsFile(t)
	src := &podSource{}
	src.set(Pod{UID: "p0", Name: "p0", Namespace: "default", Netns: ns})
	path := sockPath(t)
	var refused refusals
	s := startServerCfg(t, ServerConfig{Path: path, Snapshot: src, AckTimeout: ackTimeout, OnRefused: refused.hook})
	h := newRecHandler()
	stop := startClient(t, path, h)
	for e := h.next(t); e.kind != "snapshot"; e = h.next(t) {
	}
	waitReady(t, s)

	conns := make([]*net.UnixConn, 0, flood)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range flood {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		if err != nil {
			t.Fatalf("flood connection %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	// All but MaxPending are dropped as soon as they are accepted.
	refused.waitCount(t, flood-DefaultMaxPending)
	if p := s.pendingCount(); p > DefaultMaxPending {
		t.Fatalf("%d connections waiting for a hello, bound %d", p, DefaultMaxPending)
	}
	// The live ztunnel is undisturbed.
	expectAddOnly(t, s, h, ns, "p1")

	// ztunnel restarts while the flood's connections are still held.
	start := time.Now()
	stop()
	h2 := newRecHandler()
	startClient(t, path, h2)
	for e := h2.next(t); e.kind != "snapshot"; e = h2.next(t) {
	}
	took := time.Since(start)
	if took > 5*time.Second {
		t.Fatalf("restarted ztunnel got its snapshot after %v (hello timeout %v)", took, ackTimeout)
	}
	t.Logf("restarted ztunnel got its snapshot %v after the restart, with %d idle connections held (%d refused)", took, flood, s.Refused())
	waitReady(t, s)
	expectAddOnly(t, s, h2, ns, "p2")
	if p := s.pendingCount(); p > DefaultMaxPending {
		t.Fatalf("%d connections waiting for a hello, bound %d", p, DefaultMaxPending)
	}
}
