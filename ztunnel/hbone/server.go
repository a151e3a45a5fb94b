package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// Handler decides and serves the CONNECT streams a Server accepts.
//
// Both methods get the stream's context. It is cancelled as soon as the
// stream is over for the server: the peer reset it (RST_STREAM), both
// directions ended, the server reset it, the connection closed (peer EOF,
// read or write error, GOAWAY with an error code), or the server was
// closed. Methods must return promptly once it is done and pass it to
// everything they wait on (dials above all): until Authorize and
// ServeHBONE have returned, the stream keeps its slot in the connection's
// MaxConcurrentStreams, so handlers that ignore ctx keep their work going
// after the peer has gone and, once MaxConcurrentStreams of them pile up,
// make the connection refuse every new stream.
type Handler interface {
	// Authorize decides whether this node serves req and returns the
	// address to connect the stream to. An error refuses the stream: one
	// wrapping ErrBadRequest is answered 400, ErrNotServed 404, anything
	// else 403; the error text is the response body. It runs on the
	// stream's own goroutine; ctx is the stream's (see Handler).
	Authorize(ctx context.Context, req *Request) (target netip.AddrPort, err error)
	// ServeHBONE owns an authorized stream (s.Request().Target is set): it
	// answers it (Accept or Reject, or implicitly by writing) and relays.
	// ctx is the stream's (see Handler): cancelled when the stream or the
	// connection ends. The server closes s when ServeHBONE returns,
	// answering 502 if it never answered.
	ServeHBONE(ctx context.Context, s *Stream)
}

// ServerConfig configures a Server. TrustDomain, TrustBundle,
// GetCertificate and Handler are required.
type ServerConfig struct {
	// TrustDomain is the local trust domain; clients must have IDs in it.
	TrustDomain string
	// TrustBundle returns the current roots client certificates must chain
	// to. It is called on every handshake, so roots can rotate.
	TrustBundle func() *x509.CertPool
	// GetCertificate returns the server certificate; called on every
	// handshake, so certificates can rotate.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Handler serves accepted streams.
	Handler Handler
	// MaxConcurrentStreams is advertised per connection and bounds the
	// handlers in flight per connection: a peer-opened stream holds a slot
	// from its HEADERS until its handler has returned (not until the peer
	// resets it); HEADERS beyond it are refused (REFUSED_STREAM). 0 means
	// DefaultMaxConcurrentStreams.
	MaxConcurrentStreams uint32
	// StreamOpenRate bounds, per connection, the streams a peer opens per
	// second (every HEADERS opening a stream, refused or not), with bursts
	// of StreamOpenBurst; past it the connection is closed with
	// GOAWAY(ENHANCE_YOUR_CALM). 0 means DefaultStreamOpenRate, negative
	// means unlimited. StreamOpenBurst 0 means twice the rate (at least 1).
	StreamOpenRate  float64
	StreamOpenBurst int
	// ResetRate bounds, per connection, the premature resets per second: a
	// peer's RST_STREAM on a stream not answered yet, or a stream error the
	// peer caused; a reset after the answer counts a quarter. Bursts of
	// ResetBurst; past it GOAWAY(ENHANCE_YOUR_CALM) and close. 0 means
	// DefaultResetRate, negative means unlimited. ResetBurst 0 means twice
	// the rate (at least 1).
	ResetRate  float64
	ResetBurst int
	// OnLimit, if set, is called once per limit event with one of the
	// Limit* reasons (LimitRefusedStream per refused stream, the others
	// once per connection closed). It runs on the connection's read loop:
	// it must be fast and must not block (count a metric).
	OnLimit func(reason string)
	// HandshakeTimeout bounds TLS handshake plus HTTP/2 preface; 0 means 10s.
	HandshakeTimeout time.Duration
	// Logger receives connection-level events; nil discards them.
	Logger *slog.Logger
}

// Server is an HBONE server (the port 15008 side). Its methods are safe for
// concurrent use.
type Server struct {
	cfg     ServerConfig
	tlsConf *tls.Config
	log     *slog.Logger
	ctx     context.Context
	cancel  context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup // connection and stream goroutines
}

// NewServer checks cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := spiffe.ValidateTrustDomain(cfg.TrustDomain); err != nil {
		return nil, fmt.Errorf("hbone server config: %w", err)
	}
	switch {
	case cfg.TrustBundle == nil:
		return nil, errors.New("hbone server config: TrustBundle is required")
	case cfg.GetCertificate == nil:
		return nil, errors.New("hbone server config: GetCertificate is required")
	case cfg.Handler == nil:
		return nil, errors.New("hbone server config: Handler is required")
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	var err error
	if cfg.StreamOpenRate, cfg.StreamOpenBurst, err = rateDefaults("StreamOpen", cfg.StreamOpenRate, cfg.StreamOpenBurst, DefaultStreamOpenRate); err != nil {
		return nil, err
	}
	if cfg.ResetRate, cfg.ResetBurst, err = rateDefaults("Reset", cfg.ResetRate, cfg.ResetBurst, DefaultResetRate); err != nil {
		return nil, err
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	srv := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
	}
	srv.tlsConf = serverTLSConfig(&srv.cfg)
	srv.ctx, srv.cancel = context.WithCancel(context.Background())
	return srv, nil
}

// Serve accepts connections on ln and serves each on its own goroutine until
// ln fails or the server is closed (then ErrServerClosed). The caller creates
// ln, so it controls the socket (address, MPTCP, marks).
func (srv *Server) Serve(ln net.Listener) error {
	srv.mu.Lock()
	if srv.closed {
		srv.mu.Unlock()
		return ErrServerClosed
	}
	srv.listeners[ln] = struct{}{}
	srv.mu.Unlock()
	defer func() {
		srv.mu.Lock()
		delete(srv.listeners, ln)
		srv.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if srv.isClosed() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || !errors.Is(err, net.ErrClosed) && isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				srv.log.Warn("hbone accept failed; retrying", "error", err, "backoff", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-srv.ctx.Done():
					return ErrServerClosed
				}
			}
			return fmt.Errorf("accepting HBONE connections on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		if !srv.track(1) {
			nc.Close()
			return ErrServerClosed
		}
		go func() {
			defer srv.wg.Done()
			if err := srv.serveConn(nc); err != nil {
				srv.log.Debug("hbone connection ended", "remote", nc.RemoteAddr().String(), "error", err)
			}
		}()
	}
}

// rateDefaults applies the defaults of a rate limit: rate 0 means def, a
// burst of 0 twice the rate (at least 1).
func rateDefaults(name string, r float64, burst int, def float64) (float64, int, error) {
	switch {
	case math.IsNaN(r):
		return 0, 0, fmt.Errorf("hbone server config: %sRate is NaN; use a negative rate for no limit", name)
	case burst < 0:
		return 0, 0, fmt.Errorf("hbone server config: %sBurst %d is negative; use 0 for twice the rate", name, burst)
	case r == 0:
		r = def
	}
	if burst == 0 && r > 0 {
		burst = int(min(math.Ceil(2*r), math.MaxInt32))
	}
	return r, burst, nil
}

func isTemporary(err error) bool {
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

// track adds n to the goroutine count unless the server is closed.
func (srv *Server) track(n int) bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.closed {
		return false
	}
	srv.wg.Add(n)
	return true
}

func (srv *Server) isClosed() bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return srv.closed
}

// ServeConn runs the TLS handshake on nc and serves HTTP/2 on it until the
// connection ends. It takes ownership of nc.
func (srv *Server) ServeConn(nc net.Conn) error {
	if !srv.track(1) {
		nc.Close()
		return ErrServerClosed
	}
	defer srv.wg.Done()
	return srv.serveConn(nc)
}

func (srv *Server) serveConn(nc net.Conn) error {
	bc := &batchConn{Conn: nc}
	tc := tls.Server(bc, srv.tlsConf)
	_ = nc.SetDeadline(time.Now().Add(srv.cfg.HandshakeTimeout))
	if err := tc.HandshakeContext(srv.ctx); err != nil {
		nc.Close()
		return fmt.Errorf("hbone TLS handshake with %s: %w", nc.RemoteAddr(), err)
	}
	_ = nc.SetWriteDeadline(time.Time{}) // the read deadline bounds preface and SETTINGS
	peer, err := spiffe.FromCertificate(tc.ConnectionState().PeerCertificates[0])
	if err != nil { // verified in VerifyConnection; cannot happen
		nc.Close()
		return err
	}
	return srv.serveH2(tc, bc, peer)
}

// serveH2 serves HTTP/2 on an authenticated connection to peer.
func (srv *Server) serveH2(nc net.Conn, lower *batchConn, peer spiffe.ID) error {
	c := newConn(nc, lower, false, peer, srv.cfg.MaxConcurrentStreams, srv.log)
	ctx, cancel := context.WithCancel(srv.ctx)
	defer cancel()
	c.ctx = ctx
	c.lim = newConnLimits(&srv.cfg)
	c.newStream = func(s *Stream) {
		srv.wg.Add(1) // the connection's own count is held, so this never races Wait
		go srv.serveStream(s)
	}
	srv.mu.Lock()
	if srv.closed {
		srv.mu.Unlock()
		nc.Close()
		return ErrServerClosed
	}
	srv.conns[c] = struct{}{}
	srv.mu.Unlock()
	defer func() {
		srv.mu.Lock()
		delete(srv.conns, c)
		srv.mu.Unlock()
	}()
	if err := c.start(); err != nil {
		return err
	}
	<-c.done
	if errors.Is(c.closeErr, ErrConnClosed) && errors.Unwrap(c.closeErr) == nil {
		return nil
	}
	return c.closeErr
}

// serveStream runs the handler of a peer-opened stream; the stream holds
// its slot in the connection's MaxConcurrentStreams until this returns.
func (srv *Server) serveStream(s *Stream) {
	defer srv.wg.Done()
	defer s.c.handlerDone()
	defer s.Close()
	defer s.cancel()
	if s.reject != nil {
		srv.log.Debug("hbone request rejected", "peer", s.c.peer.String(), "status", s.reject.status, "reason", s.reject.reason)
		_ = s.Reject(s.reject.status, s.reject.reason)
		return
	}
	target, err := srv.cfg.Handler.Authorize(s.ctx, s.req)
	if err != nil {
		status := statusOf(err)
		srv.log.Debug("hbone request refused", "peer", s.req.Peer.String(), "authority", s.req.Authority.String(), "status", status, "error", err)
		_ = s.Reject(status, err.Error())
		return
	}
	s.req.Target = target
	srv.cfg.Handler.ServeHBONE(s.ctx, s)
	if !s.answered() {
		_ = s.Reject(http.StatusBadGateway, "handler returned without answering")
	}
}

// Shutdown stops accepting, sends GOAWAY on every connection and waits until
// their streams finish or ctx ends (then it closes everything, like Close).
func (srv *Server) Shutdown(ctx context.Context) error {
	conns := srv.stop()
	for _, c := range conns {
		c.shutdown()
	}
	done := make(chan struct{})
	go func() {
		srv.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		srv.cancel()
		return nil
	case <-ctx.Done():
		srv.Close()
		return ctx.Err()
	}
}

// Close stops accepting, closes every connection, cancels every handler's
// context and waits for the server's goroutines to end.
func (srv *Server) Close() error {
	conns := srv.stop()
	srv.cancel()
	for _, c := range conns {
		c.closeWith(ErrServerClosed)
	}
	srv.wg.Wait()
	return nil
}

// stop marks the server closed, closes its listeners and returns its
// connections.
func (srv *Server) stop() []*conn {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	srv.closed = true
	for ln := range srv.listeners {
		ln.Close()
	}
	conns := make([]*conn, 0, len(srv.conns))
	for c := range srv.conns {
		conns = append(conns, c)
	}
	return conns
}
