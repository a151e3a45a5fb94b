package hbone

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/pkg/testpki"
)

// trackingListener counts accepted connections and can kill them.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) accepts() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *trackingListener) killAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func addrOf(ln net.Listener) netip.AddrPort {
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// tcpServer runs serve for each connection on a loopback listener; all
// connections are closed and goroutines awaited at cleanup.
func tcpServer(t testing.TB, serve func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln := listen(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				serve(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return addrOf(ln)
}

// echoServer echoes until EOF, then half-closes.
func echoServer(t testing.TB) netip.AddrPort {
	return tcpServer(t, func(c *net.TCPConn) {
		buf := make([]byte, 256<<10)
		if _, err := io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf); err == nil {
			c.CloseWrite()
			io.Copy(io.Discard, c)
		}
	})
}

type handlerFuncs struct {
	authorize func(ctx context.Context, req *Request) (netip.AddrPort, error)
	serve     func(ctx context.Context, s *Stream)
}

func (h handlerFuncs) Authorize(ctx context.Context, req *Request) (netip.AddrPort, error) {
	return h.authorize(ctx, req)
}
func (h handlerFuncs) ServeHBONE(ctx context.Context, s *Stream) { h.serve(ctx, s) }

var (
	idA = spiffe.ID{TrustDomain: "cluster.local", Namespace: "a", ServiceAccount: "a"}
	idB = spiffe.ID{TrustDomain: "cluster.local", Namespace: "b", ServiceAccount: "b"}
)

// env is a server (identity idB) in front of an echo target, and a pool
// (identity idA) that dials it.
type env struct {
	ca      *testpki.CA
	srv     *Server
	ln      *trackingListener
	addr    netip.AddrPort // the server's 15008
	target  netip.AddrPort // served authority (echo)
	pool    *Pool
	key     Key
	srvCert tls.Certificate
	cliCert tls.Certificate
	reqs    chan *Request // every authorized request, if non-nil
}

type envOption func(*ServerConfig, *PoolConfig)

func newEnv(t testing.TB, handler Handler, opts ...envOption) *env {
	t.Helper()
	e := &env{ca: testpki.NewCA(t, "cluster.local")}
	e.srvCert = e.ca.Leaf(t, idB.Namespace, idB.ServiceAccount)
	e.cliCert = e.ca.Leaf(t, idA.Namespace, idA.ServiceAccount)
	if handler == nil {
		e.target = echoServer(t)
		e.reqs = make(chan *Request, 1000)
		handler = RelayHandler(func(ctx context.Context, req *Request) (netip.AddrPort, error) {
			if req.Authority != e.target {
				return netip.AddrPort{}, ErrNotServed
			}
			select {
			case e.reqs <- req:
			default:
			}
			return e.target, nil
		}, nil)
	}
	roots := e.ca.Pool()
	scfg := ServerConfig{
		TrustDomain:    "cluster.local",
		TrustBundle:    func() *x509.CertPool { return roots },
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &e.srvCert, nil },
		Handler:        handler,
	}
	pcfg := PoolConfig{
		TrustBundle:       func() *x509.CertPool { return roots },
		ClientCertificate: func(spiffe.ID) (*tls.Certificate, error) { return &e.cliCert, nil },
	}
	for _, o := range opts {
		o(&scfg, &pcfg)
	}
	srv, err := NewServer(scfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	e.ln = &trackingListener{Listener: listen(t)}
	e.addr = addrOf(e.ln)
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(e.ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	e.pool, err = NewPool(pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.pool.Close() })
	e.key = Key{Source: idA, Destination: idB, Addr: e.addr}
	return e
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// pump writes n deterministic pseudo-random bytes to w and returns their hash.
func pump(w io.Writer, n int64, seed uint64) ([]byte, error) {
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for n > 0 {
		chunk := buf[:min(int64(len(buf)), n)]
		rng.Read(chunk)
		h.Write(chunk)
		if _, err := w.Write(chunk); err != nil {
			return nil, err
		}
		n -= int64(len(chunk))
	}
	return h.Sum(nil), nil
}

// roundTrip sends n bytes through s, half-closes, and checks the echo.
func roundTrip(t testing.TB, s *Stream, n int64) {
	t.Helper()
	type res struct {
		sum []byte
		err error
	}
	sent := make(chan res, 1)
	go func() {
		sum, err := pump(s, n, uint64(n))
		if err == nil {
			err = s.CloseWrite()
		}
		sent <- res{sum, err}
	}()
	h := sha256.New()
	got, err := io.Copy(h, s)
	if err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	r := <-sent
	if r.err != nil {
		t.Fatalf("sending: %v", r.err)
	}
	if got != n || string(h.Sum(nil)) != string(r.sum) {
		t.Fatalf("echo mismatch: got %d bytes (sha256 %x), sent %d (sha256 %x)", got, h.Sum(nil), n, r.sum)
	}
}

// waitFor polls cond until it holds or the deadline passes (generous: the
// race detector on a loaded 2-core machine is slow).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
