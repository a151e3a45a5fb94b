//go:build linux

package zds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

const testWait = 10 * time.Second

// --- helpers ---

func selfNetnsInode(t testing.TB) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

type event struct {
	kind    string // add, keep, del, snapshot
	uid     string
	ino     uint64
	name    string
	uids    []string
	dropped []string
}

// recHandler records requests and keeps a pod set like ztunnel would.
type recHandler struct {
	events chan event

	mu      sync.Mutex
	pods    map[string]bool
	failAdd map[string]string        // uid -> error text
	block   map[string]chan struct{} // uid -> AddPod blocks until closed
}

var _ Handler = (*recHandler)(nil)

func newRecHandler() *recHandler {
	return &recHandler{
		events:  make(chan event, 100),
		pods:    map[string]bool{},
		failAdd: map[string]string{},
		block:   map[string]chan struct{}{},
	}
}

func (h *recHandler) AddPod(ctx context.Context, w WorkloadAdd) error {
	var st unix.Stat_t
	err := unix.Fstat(int(w.Netns.Fd()), &st)
	w.Netns.Close()
	if err != nil {
		return err
	}
	h.mu.Lock()
	block := h.block[w.UID]
	failMsg := h.failAdd[w.UID]
	h.mu.Unlock()
	if block != nil {
		<-block
	}
	if failMsg != "" {
		return errors.New(failMsg)
	}
	h.mu.Lock()
	h.pods[w.UID] = true
	h.mu.Unlock()
	h.events <- event{kind: "add", uid: w.UID, ino: st.Ino, name: w.Namespace + "/" + w.Name}
	return nil
}

func (h *recHandler) KeepPod(ctx context.Context, uid string) error {
	h.events <- event{kind: "keep", uid: uid}
	return nil
}

func (h *recHandler) DelPod(ctx context.Context, uid string) error {
	h.mu.Lock()
	delete(h.pods, uid)
	h.mu.Unlock()
	h.events <- event{kind: "del", uid: uid}
	return nil
}

func (h *recHandler) SnapshotDone(ctx context.Context, uids []string) error {
	keep := map[string]bool{}
	for _, u := range uids {
		keep[u] = true
	}
	var dropped []string
	h.mu.Lock()
	for u := range h.pods {
		if !keep[u] {
			delete(h.pods, u)
			dropped = append(dropped, u)
		}
	}
	h.mu.Unlock()
	slices.Sort(dropped)
	h.events <- event{kind: "snapshot", uids: slices.Sorted(slices.Values(uids)), dropped: dropped}
	return nil
}

func (h *recHandler) podSet() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Sorted(func(yield func(string) bool) {
		for u := range h.pods {
			if !yield(u) {
				return
			}
		}
	})
}

func (h *recHandler) next(t *testing.T) event {
	t.Helper()
	select {
	case e := <-h.events:
		return e
	case <-time.After(testWait):
		t.Fatal("timed out waiting for a handler event")
		return event{}
	}
}

func (h *recHandler) expectNone(t *testing.T) {
	t.Helper()
	select {
	case e := <-h.events:
		t.Fatalf("unexpected handler event %+v", e)
	default:
	}
}

// podSource is a mutable SnapshotSource.
type podSource struct {
	mu   sync.Mutex
	pods []Pod
}

func (s *podSource) Snapshot() []Pod {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.pods)
}

func (s *podSource) set(p ...Pod) {
	s.mu.Lock()
	s.pods = p
	s.mu.Unlock()
}

func sockPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "run", "ztunnel.sock")
}

func startServer(t *testing.T, path string, src SnapshotSource, ackTimeout time.Duration) *Server {
	t.Helper()
	s, err := NewServer(ServerConfig{Path: path, Snapshot: src, AckTimeout: ackTimeout})
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

// startClient runs a Client until the returned stop function is called (or
// the test ends); stop waits for Run to return.
func startClient(t *testing.T, path string, h Handler) (stop func()) {
	t.Helper()
	c, err := NewClient(ClientConfig{Path: path, Handler: h, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func waitReady(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

func openNetnsFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// --- server + client ---

func TestSnapshotHandoff(t *testing.T) {
	ns := openNetnsFile(t)
	want := selfNetnsInode(t)
	src := &podSource{}
	src.set(
		Pod{UID: "u1", Name: "a", Namespace: "default", ServiceAccount: "sa", Netns: ns},
		Pod{UID: "u2", Name: "b", Namespace: "default", ServiceAccount: "sa", Netns: ns},
		Pod{UID: "u3", Name: "c", Namespace: "other", ServiceAccount: "sa", NetnsPath: "/proc/self/ns/net"},
		Pod{UID: "u4", Name: "d", Namespace: "other", NetnsPath: filepath.Join(t.TempDir(), "missing")},
	)
	path := sockPath(t)
	s := startServer(t, path, src, 0)

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want socket 0600", fi.Mode())
	}

	h := newRecHandler()
	startClient(t, path, h)
	names := map[string]string{}
	for range 3 {
		e := h.next(t)
		if e.kind != "add" {
			t.Fatalf("got %+v, want add", e)
		}
		if e.ino != want {
			t.Errorf("pod %s: netns inode %d, want %d", e.uid, e.ino, want)
		}
		names[e.uid] = e.name
	}
	if !maps(names, map[string]string{"u1": "default/a", "u2": "default/b", "u3": "other/c"}) {
		t.Fatalf("adds %v", names)
	}
	if e := h.next(t); e.kind != "keep" || e.uid != "u4" {
		t.Fatalf("got %+v, want keep u4 (no netns available)", e)
	}
	e := h.next(t)
	if e.kind != "snapshot" || !slices.Equal(e.uids, []string{"u1", "u2", "u3", "u4"}) {
		t.Fatalf("got %+v, want snapshot of u1..u4", e)
	}
	waitReady(t, s)
	// The Server must not have closed the caller's file.
	if _, err := ns.Stat(); err != nil {
		t.Fatalf("caller's netns file was closed: %v", err)
	}
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestAddDelAfterSnapshot(t *testing.T) {
	ns := openNetnsFile(t)
	path := sockPath(t)
	s := startServer(t, path, &podSource{}, 0)
	h := newRecHandler()
	startClient(t, path, h)
	if e := h.next(t); e.kind != "snapshot" || len(e.uids) != 0 {
		t.Fatalf("got %+v, want empty snapshot", e)
	}
	waitReady(t, s)
	ctx := context.Background()

	if err := s.AddPod(ctx, Pod{UID: "u1", Name: "a", Namespace: "ns", ServiceAccount: "sa", Netns: ns}); err != nil {
		t.Fatal(err)
	}
	// AddPod returned only after the ack, so the handler has run.
	if got := h.podSet(); !slices.Equal(got, []string{"u1"}) {
		t.Fatalf("pods after AddPod returned: %v", got)
	}
	if e := h.next(t); e.kind != "add" || e.uid != "u1" || e.ino != selfNetnsInode(t) {
		t.Fatalf("got %+v", e)
	}

	h.mu.Lock()
	h.failAdd["bad"] = "cannot create listener in pod"
	h.mu.Unlock()
	err := s.AddPod(ctx, Pod{UID: "bad", Name: "b", Namespace: "ns", NetnsPath: "/proc/self/ns/net"})
	var ae *AckError
	if !errors.As(err, &ae) || ae.Msg != "cannot create listener in pod" {
		t.Fatalf("AddPod err = %v, want AckError with handler text", err)
	}

	if err := s.DelPod(ctx, "u1"); err != nil {
		t.Fatal(err)
	}
	if e := h.next(t); e.kind != "del" || e.uid != "u1" {
		t.Fatalf("got %+v, want del u1", e)
	}

	// Concurrent requests: serialized, each matched to its own ack.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			errs <- s.AddPod(ctx, Pod{UID: fmt.Sprintf("c%d", i), Netns: ns})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := len(h.podSet()); got != 20 {
		t.Fatalf("%d pods after 20 concurrent adds", got)
	}

	// Input errors are reported without touching the connection.
	if err := s.AddPod(ctx, Pod{UID: "nons"}); err == nil {
		t.Fatal("AddPod without netns succeeded")
	}
	if err := s.DelPod(ctx, ""); err == nil {
		t.Fatal("DelPod with empty uid succeeded")
	}
}

func TestNoZtunnel(t *testing.T) {
	s := startServer(t, sockPath(t), &podSource{}, 0)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.AddPod(ctx, Pod{UID: "u", NetnsPath: "/proc/self/ns/net"}); !errors.Is(err, ErrNoZtunnel) {
		t.Fatalf("AddPod err = %v, want ErrNoZtunnel", err)
	}
	if err := s.DelPod(ctx, "u"); !errors.Is(err, ErrNoZtunnel) {
		t.Fatalf("DelPod err = %v, want ErrNoZtunnel", err)
	}
	if ctx.Err() != nil {
		t.Fatal("ErrNoZtunnel was not immediate")
	}
}

func TestAckTimeoutDropsConnection(t *testing.T) {
	path := sockPath(t)
	s := startServer(t, path, &podSource{}, 300*time.Millisecond)
	h := newRecHandler()
	release := make(chan struct{})
	h.block["slow"] = release
	startClient(t, path, h)
	h.next(t) // first snapshot
	waitReady(t, s)

	err := s.AddPod(context.Background(), Pod{UID: "slow", NetnsPath: "/proc/self/ns/net"})
	if !errors.Is(err, ErrAckTimeout) {
		t.Fatalf("AddPod err = %v, want ErrAckTimeout", err)
	}
	close(release)
	// The late ack must not be taken for another request: the server
	// dropped the connection, the client reconnects and gets a new snapshot.
	for {
		e := h.next(t)
		if e.kind == "snapshot" {
			break
		}
	}
	waitReady(t, s)
	if err := s.DelPod(context.Background(), "slow"); err != nil {
		t.Fatal(err)
	}
}

func TestAddPodContextCancel(t *testing.T) {
	path := sockPath(t)
	s := startServer(t, path, &podSource{}, 5*time.Second)
	h := newRecHandler()
	release := make(chan struct{})
	h.block["slow"] = release
	startClient(t, path, h)
	h.next(t)
	waitReady(t, s)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.AddPod(ctx, Pod{UID: "slow", NetnsPath: "/proc/self/ns/net"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AddPod err = %v, want deadline exceeded", err)
	}
	close(release)
	// The abandoned exchange still consumes its own ack; the next request
	// gets its own.
	if err := s.DelPod(context.Background(), "slow"); err != nil {
		t.Fatal(err)
	}
	if e := h.next(t); e.kind != "add" || e.uid != "slow" {
		t.Fatalf("got %+v", e)
	}
	if e := h.next(t); e.kind != "del" || e.uid != "slow" {
		t.Fatalf("got %+v", e)
	}
}

func TestReconnectResendsSnapshot(t *testing.T) {
	ns := openNetnsFile(t)
	src := &podSource{}
	src.set(Pod{UID: "a", Netns: ns}, Pod{UID: "b", Netns: ns}, Pod{UID: "c", Netns: ns})
	path := sockPath(t)
	s := startServer(t, path, src, 0)
	h := newRecHandler()
	stop := startClient(t, path, h)
	for range 3 {
		h.next(t)
	}
	if e := h.next(t); e.kind != "snapshot" {
		t.Fatalf("got %+v", e)
	}
	waitReady(t, s)
	if err := s.AddPod(context.Background(), Pod{UID: "d", Netns: ns}); err != nil {
		t.Fatal(err)
	}
	h.next(t)
	if got := h.podSet(); !slices.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Fatalf("pods %v", got)
	}

	// ztunnel restarts (keeping its state, as in an in-place upgrade) while
	// the agent's pods change.
	stop()
	src.set(Pod{UID: "a", Netns: ns}, Pod{UID: "b", Netns: ns}, Pod{UID: "e", Netns: ns})
	startClient(t, path, h)
	var adds []string
	for {
		e := h.next(t)
		if e.kind == "add" {
			adds = append(adds, e.uid)
			continue
		}
		if e.kind != "snapshot" {
			t.Fatalf("got %+v", e)
		}
		if !slices.Equal(e.uids, []string{"a", "b", "e"}) || !slices.Equal(e.dropped, []string{"c", "d"}) {
			t.Fatalf("snapshot %+v, want uids a,b,e dropping c,d", e)
		}
		break
	}
	slices.Sort(adds)
	if !slices.Equal(adds, []string{"a", "b", "e"}) {
		t.Fatalf("re-sent adds %v", adds)
	}
	if got := h.podSet(); !slices.Equal(got, []string{"a", "b", "e"}) {
		t.Fatalf("pods %v", got)
	}
}

// --- raw peers ---

func dialRaw(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func sendRaw(t *testing.T, c *net.UnixConn, data []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(data, oob, nil); err != nil {
		t.Fatal(err)
	}
}

func recvRaw(t *testing.T, c *net.UnixConn) (packet, error) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(testWait)); err != nil {
		t.Fatal(err)
	}
	return recvPacket(c)
}

func rawHello(t *testing.T, c *net.UnixConn) {
	t.Helper()
	sendRaw(t, c, mustMarshal(t, &zdsapi.ZdsHello{Version: zdsapi.Version_V1}))
}

func rawAck(t *testing.T, c *net.UnixConn, msg string) {
	t.Helper()
	sendRaw(t, c, mustMarshal(t, &zdsapi.WorkloadResponse{Payload: &zdsapi.WorkloadResponse_Ack{Ack: &zdsapi.Ack{Error: msg}}}))
}

func expectRequest(t *testing.T, c *net.UnixConn, kind Kind) Request {
	t.Helper()
	p, err := recvRaw(t, c)
	if err != nil {
		t.Fatal(err)
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	req, err := DecodeRequest(p.data, p.fds)
	if err != nil {
		t.Fatal(err)
	}
	if req.Kind != kind {
		t.Fatalf("got %v, want %v", req.Kind, kind)
	}
	if req.Netns != nil {
		req.Netns.Close()
	}
	return req
}

func expectEOF(t *testing.T, c *net.UnixConn) {
	t.Helper()
	p, err := recvRaw(t, c)
	closeFDs(p.fds)
	if err == nil {
		t.Fatalf("got packet %q, want connection closed by server", p.data)
	}
	if !isClosedErr(err) {
		t.Fatalf("err = %v, want connection closed by server", err)
	}
}

func TestServerNewerConnectionReplaces(t *testing.T) {
	path := sockPath(t)
	s := startServer(t, path, &podSource{}, 0)
	c1 := dialRaw(t, path)
	rawHello(t, c1)
	expectRequest(t, c1, KindSnapshotSent)
	rawAck(t, c1, "")
	waitReady(t, s)

	c2 := dialRaw(t, path)
	rawHello(t, c2)
	expectRequest(t, c2, KindSnapshotSent)
	expectEOF(t, c1)
	rawAck(t, c2, "")
	waitReady(t, s)

	done := make(chan error, 1)
	go func() { done <- s.DelPod(context.Background(), "x") }()
	if req := expectRequest(t, c2, KindDel); req.UID != "x" {
		t.Fatalf("del uid %q", req.UID)
	}
	rawAck(t, c2, "no such pod")
	var ae *AckError
	if err := <-done; !errors.As(err, &ae) || ae.Msg != "no such pod" {
		t.Fatalf("DelPod err = %v", err)
	}
}

func TestServerDropsMisbehavingZtunnel(t *testing.T) {
	path := sockPath(t)
	ns := openNetnsFile(t)
	src := &podSource{}
	s := startServer(t, path, src, 0)
	before := countFDs(t)

	t.Run("garbage hello", func(t *testing.T) {
		c := dialRaw(t, path)
		sendRaw(t, c, []byte{0xff, 0xff})
		expectEOF(t, c)
	})
	t.Run("hello with version 0 fields", func(t *testing.T) {
		c := dialRaw(t, path)
		sendRaw(t, c, []byte{0x50, 0x01}) // unknown field only: version NOT_USED
		expectEOF(t, c)
	})
	t.Run("hello with fd", func(t *testing.T) {
		c := dialRaw(t, path)
		fd := openNetns(t)
		sendRaw(t, c, mustMarshal(t, &zdsapi.ZdsHello{Version: zdsapi.Version_V1}), fd)
		unix.Close(fd)
		expectEOF(t, c)
	})
	t.Run("garbage ack", func(t *testing.T) {
		src.set(Pod{UID: "a", Netns: ns})
		defer src.set()
		c := dialRaw(t, path)
		rawHello(t, c)
		expectRequest(t, c, KindAdd)
		sendRaw(t, c, []byte{0xff})
		expectEOF(t, c)
	})
	t.Run("ack carrying fd", func(t *testing.T) {
		c := dialRaw(t, path)
		rawHello(t, c)
		expectRequest(t, c, KindSnapshotSent)
		fd := openNetns(t)
		sendRaw(t, c, mustMarshal(t, &zdsapi.WorkloadResponse{Payload: &zdsapi.WorkloadResponse_Ack{Ack: &zdsapi.Ack{}}}), fd)
		unix.Close(fd)
		expectEOF(t, c)
	})
	t.Run("unsolicited message", func(t *testing.T) {
		c := dialRaw(t, path)
		rawHello(t, c)
		expectRequest(t, c, KindSnapshotSent)
		rawAck(t, c, "")
		waitReady(t, s)
		rawAck(t, c, "")
		expectEOF(t, c)
	})
	t.Run("ack error during snapshot keeps going", func(t *testing.T) {
		src.set(Pod{UID: "a", Netns: ns}, Pod{UID: "b", Netns: ns})
		defer src.set()
		c := dialRaw(t, path)
		rawHello(t, c)
		expectRequest(t, c, KindAdd)
		rawAck(t, c, "failed")
		expectRequest(t, c, KindAdd)
		rawAck(t, c, "")
		expectRequest(t, c, KindSnapshotSent)
		rawAck(t, c, "")
		waitReady(t, s)
		c.Close()
	})

	// The server still serves a well-behaved ztunnel, and holds no extra fds.
	h := newRecHandler()
	startClient(t, path, h)
	if e := h.next(t); e.kind != "snapshot" {
		t.Fatalf("got %+v", e)
	}
	waitReady(t, s)
	if err := s.AddPod(context.Background(), Pod{UID: "ok", Netns: ns}); err != nil {
		t.Fatal(err)
	}
	// One more fd each for the client's and the server's end of the live
	// connection.
	if after := countFDs(t); after > before+2 {
		t.Fatalf("fd count grew from %d to %d", before, after)
	}
}

// fakeAgent listens like the agent and hands the test the raw connection the
// Client under test made.
func fakeAgent(t *testing.T) (path string, accept func() *net.UnixConn) {
	t.Helper()
	path = sockPath(t)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return path, func() *net.UnixConn {
		t.Helper()
		if err := ln.SetDeadline(time.Now().Add(testWait)); err != nil {
			t.Fatal(err)
		}
		c, err := ln.AcceptUnix()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		p, err := recvRaw(t, c)
		if err != nil || p.err != nil || len(p.fds) != 0 {
			t.Fatalf("hello: %v %v fds=%v", err, p.err, p.fds)
		}
		var hello zdsapi.ZdsHello
		if err := proto.Unmarshal(p.data, &hello); err != nil || hello.Version != zdsapi.Version_V1 {
			t.Fatalf("hello %v: %v", &hello, err)
		}
		return c
	}
}

func readAck(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	p, err := recvRaw(t, c)
	if err != nil {
		t.Fatal(err)
	}
	if p.err != nil || len(p.fds) != 0 {
		t.Fatalf("bad ack packet: %v fds=%v", p.err, p.fds)
	}
	msg, err := decodeAck(p.data)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func TestClientRejectsMalformed(t *testing.T) {
	path, accept := fakeAgent(t)
	h := newRecHandler()
	startClient(t, path, h)
	c := accept()

	sendRaw(t, c, mustMarshal(t, snapMsg()))
	if msg := readAck(t, c); msg != "" {
		t.Fatalf("snapshot_sent ack: %q", msg)
	}
	h.next(t)

	before := countFDs(t)
	add := mustMarshal(t, addMsg("u1"))
	del := mustMarshal(t, delMsg("u1"))
	big := mustMarshal(t, &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{
		Uid: "u1", WorkloadInfo: &zdsapi.WorkloadInfo{Name: strings.Repeat("x", MaxMessageSize)},
	}}})
	cases := []struct {
		name    string
		data    []byte
		netns   int
		devnull int
		want    string
	}{
		{"garbage", []byte{0xff, 0xff, 0xff}, 0, 0, "malformed"},
		{"two payloads", append(slices.Clone(add), del...), 1, 0, "2 payloads"},
		{"unknown kind", []byte{0x4a, 0x00}, 0, 0, "no known payload"},
		{"add without fd", add, 0, 0, "carries 0 fds"},
		{"add with two fds", add, 2, 0, "carries 2 fds"},
		{"add with non-netns fd", add, 0, 1, "not a namespace"},
		{"del with fd", del, 1, 0, "carries 1 fds"},
		{"snapshot_sent with fd", mustMarshal(t, snapMsg()), 0, 1, "carries 1 fds"},
		{"too many fds", del, 6, 0, "truncated"},
		{"oversized", big, 1, 0, "too large"},
		{"keep after snapshot", mustMarshal(t, keepMsg("k")), 0, 0, "after snapshot_sent"},
		{"second snapshot_sent", mustMarshal(t, snapMsg()), 0, 0, "second snapshot_sent"},
	}
	for _, tc := range cases {
		var fds []int
		for range tc.netns {
			fds = append(fds, openNetns(t))
		}
		for range tc.devnull {
			fds = append(fds, openDevNull(t))
		}
		sendRaw(t, c, tc.data, fds...)
		closeFDs(fds)
		msg := readAck(t, c)
		if !strings.Contains(msg, tc.want) {
			t.Errorf("%s: ack %q, want it to contain %q", tc.name, msg, tc.want)
		}
	}
	h.expectNone(t)
	if after := countFDs(t); after != before {
		t.Errorf("fd count %d -> %d: received fds leaked", before, after)
	}

	// The connection survived: a valid add still works.
	fd := openNetns(t)
	sendRaw(t, c, add, fd)
	unix.Close(fd)
	if msg := readAck(t, c); msg != "" {
		t.Fatalf("valid add after malformed ones: ack %q", msg)
	}
	if e := h.next(t); e.kind != "add" || e.uid != "u1" || e.ino != selfNetnsInode(t) {
		t.Fatalf("got %+v", e)
	}
	if after := countFDs(t); after != before {
		t.Errorf("fd count %d -> %d after valid add", before, after)
	}
}

func TestClientSnapshotBookkeeping(t *testing.T) {
	path, accept := fakeAgent(t)
	h := newRecHandler()
	h.pods["old"] = true
	h.pods["gone"] = true
	startClient(t, path, h)
	c := accept()
	send := func(data []byte, fds ...int) {
		t.Helper()
		sendRaw(t, c, data, fds...)
		closeFDs(fds)
		if msg := readAck(t, c); msg != "" {
			t.Fatalf("ack %q", msg)
		}
	}
	send(mustMarshal(t, addMsg("n1")), openNetns(t))
	send(mustMarshal(t, keepMsg("old")))
	send(mustMarshal(t, addMsg("n2")), openNetns(t))
	send(mustMarshal(t, delMsg("n2"))) // deleted mid-snapshot: not in the set
	send(mustMarshal(t, snapMsg()))
	var snap event
	for snap.kind != "snapshot" {
		snap = h.next(t)
	}
	if !slices.Equal(snap.uids, []string{"n1", "old"}) || !slices.Equal(snap.dropped, []string{"gone"}) {
		t.Fatalf("snapshot %+v", snap)
	}
	// Adds after the snapshot are not part of it; agent closing → reconnect.
	c.Close()
	c = accept()
	sendRaw(t, c, mustMarshal(t, snapMsg()))
	if msg := readAck(t, c); msg != "" {
		t.Fatalf("ack %q", msg)
	}
	if e := h.next(t); e.kind != "snapshot" || len(e.uids) != 0 || !slices.Equal(e.dropped, []string{"n1", "old"}) {
		t.Fatalf("second snapshot %+v", e)
	}
}

func TestNewServerStaleSocketAndClose(t *testing.T) {
	path := sockPath(t)
	s1, err := NewServer(ServerConfig{Path: path, Snapshot: &podSource{}})
	if err != nil {
		t.Fatal(err)
	}
	// Simulate a crash: the listener goes away but the socket file stays.
	s1.ln.Close()
	s2, err := NewServer(ServerConfig{Path: path, Snapshot: &podSource{}})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	s2.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file left after Close: %v", err)
	}
	if err := s2.AddPod(context.Background(), Pod{UID: "x", NetnsPath: "/proc/self/ns/net"}); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("AddPod after Close: %v", err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewServer(ServerConfig{Path: path, Snapshot: &podSource{}}); err == nil {
		t.Fatal("NewServer replaced a regular file")
	}
	if _, err := NewServer(ServerConfig{Path: path}); err == nil {
		t.Fatal("NewServer without snapshot source succeeded")
	}
}

func TestClientRetriesUntilAgentListens(t *testing.T) {
	path := sockPath(t)
	h := newRecHandler()
	startClient(t, path, h) // nothing listens yet: the client backs off and retries
	s := startServer(t, path, &podSource{}, 0)
	if e := h.next(t); e.kind != "snapshot" {
		t.Fatalf("got %+v", e)
	}
	waitReady(t, s)
	// Agent restart: the client reconnects to the new server.
	s.Close()
	s2 := startServer(t, path, &podSource{}, 0)
	if e := h.next(t); e.kind != "snapshot" {
		t.Fatalf("got %+v", e)
	}
	waitReady(t, s2)
}
