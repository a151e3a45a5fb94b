package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	e := newEnv(t, nil)
	for _, n := range []int64{1, 1 << 20, 100 << 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			h := Headers{Forwarded: `for="10.0.0.7"`, Baggage: "k8s.namespace.name=a", Traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
			s, err := e.pool.Dial(testCtx(t), e.key, e.target, h)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			roundTrip(t, s, n)
			req := <-e.reqs
			if req.Peer != idA || req.Authority != e.target || req.Headers != h || req.Target != e.target {
				t.Fatalf("server saw request %+v", req)
			}
			if s.Peer() != idB {
				t.Fatalf("client peer = %v, want %v", s.Peer(), idB)
			}
		})
	}
	if n := e.ln.accepts(); n != 1 {
		t.Fatalf("%d TCP connections, want 1 pooled", n)
	}
}

// TestHalfCloseClientFirst: the client half-closes and still receives.
func TestHalfCloseClientFirst(t *testing.T) {
	got := make(chan string, 1)
	target := tcpServer(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c) // until the client's half-close arrives
		got <- string(b)
		c.Write([]byte("reply after your EOF"))
		c.CloseWrite()
	})
	e := newEnv(t, RelayHandler(func(context.Context, *Request) (netip.AddrPort, error) { return target, nil }, nil))
	s, err := e.pool.Dial(testCtx(t), e.key, target, Headers{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Write([]byte("request"))
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, ErrWriteAfterCloseWrite) {
		t.Fatalf("Write after CloseWrite = %v", err)
	}
	if g := <-got; g != "request" {
		t.Fatalf("target got %q", g)
	}
	b, err := io.ReadAll(s)
	if err != nil || string(b) != "reply after your EOF" {
		t.Fatalf("client read %q, %v", b, err)
	}
}

// TestHalfCloseTargetFirst: the target closes its write side first; the
// client sees EOF and can still send.
func TestHalfCloseTargetFirst(t *testing.T) {
	got := make(chan string, 1)
	target := tcpServer(t, func(c *net.TCPConn) {
		c.Write([]byte("banner"))
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	e := newEnv(t, RelayHandler(func(context.Context, *Request) (netip.AddrPort, error) { return target, nil }, nil))
	s, err := e.pool.Dial(testCtx(t), e.key, target, Headers{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b, err := io.ReadAll(s)
	if err != nil || string(b) != "banner" {
		t.Fatalf("client read %q, %v", b, err)
	}
	if _, err := s.Write([]byte("still sending after EOF")); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	if g := <-got; g != "still sending after EOF" {
		t.Fatalf("target got %q", g)
	}
}

func TestConcurrentStreamsShareOneConnection(t *testing.T) {
	e := newEnv(t, nil)
	const n = 200
	ctx := testCtx(t)
	release := make(chan struct{})
	var dialed sync.WaitGroup
	errs := make(chan error, n)
	var wg sync.WaitGroup
	dialed.Add(n)
	for i := range n {
		wg.Go(func() {
			s, err := e.pool.Dial(ctx, e.key, e.target, Headers{})
			dialed.Done()
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			msg := fmt.Sprintf("stream %d", i)
			s.Write([]byte(msg))
			buf := make([]byte, len(msg))
			if _, err := io.ReadFull(s, buf); err != nil || string(buf) != msg {
				errs <- fmt.Errorf("stream %d read %q, %v", i, buf, err)
				return
			}
			<-release // keep all streams open at once
			s.CloseWrite()
			if b, err := io.ReadAll(s); err != nil || len(b) != 0 {
				errs <- fmt.Errorf("stream %d tail %q, %v", i, b, err)
			}
		})
	}
	dialed.Wait()
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := e.ln.accepts(); got != 1 {
		t.Fatalf("%d TCP connections for %d streams, want 1", got, n)
	}
}

func TestSecondConnectionAtStreamLimit(t *testing.T) {
	e := newEnv(t, nil, func(s *ServerConfig, _ *PoolConfig) { s.MaxConcurrentStreams = 2 })
	ctx := testCtx(t)
	var streams []*Stream
	for range 3 {
		s, err := e.pool.Dial(ctx, e.key, e.target, Headers{})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	if got := e.ln.accepts(); got != 2 {
		t.Fatalf("%d TCP connections for 3 streams at limit 2, want 2", got)
	}
	for _, s := range streams {
		roundTrip(t, s, 1000)
		s.Close()
	}
}

func TestRejectsUnservedAuthority(t *testing.T) {
	e := newEnv(t, nil)
	unserved := netip.MustParseAddrPort("10.9.9.9:80")
	_, err := e.pool.Dial(testCtx(t), e.key, unserved, Headers{})
	var re *RejectedError
	if !errors.As(err, &re) || re.Status != 404 || !strings.Contains(re.Reason, ErrNotServed.Error()) {
		t.Fatalf("Dial to unserved authority: %v", err)
	}
	if !strings.HasPrefix(err.Error(), "hbone to "+e.addr.String()+" as "+idA.String()+": ") {
		t.Fatalf("error does not name the hop: %v", err)
	}
	// The connection stays usable.
	s, err := e.pool.Dial(testCtx(t), e.key, e.target, Headers{})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, s, 10)
	s.Close()
}

func TestAuthorizeStatuses(t *testing.T) {
	for _, c := range []struct {
		err    error
		status int
	}{
		{fmt.Errorf("policy x: %w", ErrDenied), 403},
		{fmt.Errorf("bad: %w", ErrBadRequest), 400},
		{ErrNotServed, 404},
		{errors.New("other"), 403},
	} {
		h := handlerFuncs{
			authorize: func(context.Context, *Request) (netip.AddrPort, error) { return netip.AddrPort{}, c.err },
			serve:     func(context.Context, *Stream) {},
		}
		e := newEnv(t, h)
		_, err := e.pool.Dial(testCtx(t), e.key, netip.MustParseAddrPort("10.0.0.1:80"), Headers{})
		var re *RejectedError
		if !errors.As(err, &re) || re.Status != c.status || re.Reason != c.err.Error() {
			t.Errorf("Authorize error %v: Dial = %v, want status %d", c.err, err, c.status)
		}
	}
}

func TestDialFailureAnswers503(t *testing.T) {
	closed := listen(t)
	dead := addrOf(closed)
	closed.Close()
	e := newEnv(t, RelayHandler(func(context.Context, *Request) (netip.AddrPort, error) { return dead, nil }, nil))
	_, err := e.pool.Dial(testCtx(t), e.key, dead, Headers{})
	var re *RejectedError
	if !errors.As(err, &re) || re.Status != 503 || !strings.Contains(re.Reason, "dialing "+dead.String()) {
		t.Fatalf("Dial = %v, want 503 naming the dial", err)
	}
}

func TestClientRejectsWrongServerIdentity(t *testing.T) {
	e := newEnv(t, nil)
	e.srvCert = e.ca.Leaf(t, "a", "x")
	key := e.key
	key.Destination.Namespace, key.Destination.ServiceAccount = "a", "b"
	_, err := e.pool.Dial(testCtx(t), key, e.target, Headers{})
	want := fmt.Sprintf("hbone to %s as spiffe://cluster.local/ns/a/sa/a: peer identity spiffe://cluster.local/ns/a/sa/x, expected spiffe://cluster.local/ns/a/sa/b", e.addr)
	if !errors.Is(err, ErrPeerIdentity) || err.Error() != want {
		t.Fatalf("Dial = %v\nwant %s", err, want)
	}
}

func TestDeadConnectionEvicted(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t)
	s, err := e.pool.Dial(ctx, e.key, e.target, Headers{})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, s, 100)
	s.Close()
	s2, err := e.pool.Dial(ctx, e.key, e.target, Headers{})
	if err != nil {
		t.Fatal(err)
	}
	e.ln.killAll()
	if _, err := io.ReadAll(s2); !errors.Is(err, ErrConnClosed) {
		t.Fatalf("read on killed connection = %v, want ErrConnClosed", err)
	}
	s3, err := e.pool.Dial(ctx, e.key, e.target, Headers{})
	if err != nil {
		t.Fatalf("Dial after the connection died: %v", err)
	}
	roundTrip(t, s3, 100)
	s3.Close()
	if got := e.ln.accepts(); got != 2 {
		t.Fatalf("%d connections, want 2", got)
	}
}

func TestGracefulShutdown(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t)
	s, err := e.pool.Dial(ctx, e.key, e.target, Headers{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(ctx) }()
	// The GOAWAY evicts the connection from the pool...
	waitFor(t, "eviction after GOAWAY", func() bool {
		e.pool.mu.Lock()
		defer e.pool.mu.Unlock()
		return len(e.pool.entries) == 0
	})
	// ...while the open stream finishes normally.
	roundTrip(t, s, 1<<20)
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestStreamResetReachesServer(t *testing.T) {
	got := make(chan error, 1)
	e := newEnv(t, handlerFuncs{
		authorize: func(context.Context, *Request) (netip.AddrPort, error) { return netip.AddrPort{}, nil },
		serve: func(ctx context.Context, s *Stream) {
			s.Accept()
			_, err := io.Copy(io.Discard, s)
			got <- err
		},
	})
	s, err := e.pool.Dial(testCtx(t), e.key, netip.MustParseAddrPort("10.0.0.1:80"), Headers{})
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("partial"))
	s.Close()
	if err := <-got; !errors.Is(err, ErrStreamReset) {
		t.Fatalf("server read after client Close = %v, want ErrStreamReset", err)
	}
}

// TestFlowControlBlocksWriter: a reader that does not read stops the writer
// at the stream window, and the server buffers no more than that.
func TestFlowControlBlocksWriter(t *testing.T) {
	release := make(chan struct{})
	result := make(chan int64, 1)
	var srvStream *Stream
	ready := make(chan struct{})
	e := newEnv(t, handlerFuncs{
		authorize: func(context.Context, *Request) (netip.AddrPort, error) { return netip.AddrPort{}, nil },
		serve: func(ctx context.Context, s *Stream) {
			s.Accept()
			srvStream = s
			close(ready)
			<-release
			n, _ := io.Copy(io.Discard, s)
			result <- n
		},
	})
	free := sync.OnceFunc(func() { close(release) })
	t.Cleanup(free) // before the server's Close, which waits for the handler
	s, err := e.pool.Dial(testCtx(t), e.key, netip.MustParseAddrPort("10.0.0.1:80"), Headers{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-ready
	s.SetWriteDeadline(time.Now().Add(time.Second)) // long enough to fill the window under -race
	n, err := s.Write(make([]byte, 8<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) || n != streamWindow {
		t.Fatalf("Write into a non-reading peer: %d bytes, %v; want %d and deadline exceeded", n, err, streamWindow)
	}
	srvStream.c.mu.Lock()
	buffered := len(srvStream.recvBuf) - srvStream.recvOff
	srvStream.c.mu.Unlock()
	if buffered > streamWindow {
		t.Fatalf("server buffered %d bytes, window %d", buffered, streamWindow)
	}
	free()
	s.SetWriteDeadline(time.Time{})
	m, err := s.Write(make([]byte, 8<<20))
	if err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	if got := <-result; got != int64(n+m) {
		t.Fatalf("server read %d, client wrote %d", got, n+m)
	}
}
