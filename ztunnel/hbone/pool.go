package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Dialer opens the TCP connections under HBONE; ztunnel passes one that
// marks its sockets. *net.Dialer satisfies it.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

var _ Dialer = (*net.Dialer)(nil)

// Key identifies a pooled connection: who we are, who the server must
// prove to be, and where it listens (ip:15008).
type Key struct {
	Source      spiffe.ID
	Destination spiffe.ID
	Addr        netip.AddrPort
}

// PoolConfig configures a Pool. TrustBundle and ClientCertificate are
// required.
type PoolConfig struct {
	// TrustBundle returns the current roots server certificates must chain
	// to; called on every handshake.
	TrustBundle func() *x509.CertPool
	// ClientCertificate returns the certificate to present as source;
	// called on every handshake, so certificates can rotate.
	ClientCertificate func(source spiffe.ID) (*tls.Certificate, error)
	// Dialer opens TCP connections; nil means a *net.Dialer.
	Dialer Dialer
	// MaxStreamsPerConn caps streams per connection below the server's
	// SETTINGS_MAX_CONCURRENT_STREAMS; 0 means the server's value.
	MaxStreamsPerConn uint32
	// HandshakeTimeout bounds TCP connect, TLS handshake and the server's
	// first SETTINGS; 0 means 10s.
	HandshakeTimeout time.Duration
	// ReadIdleTimeout: after this long without a frame from the server, send
	// a PING; 0 means 30s, negative disables keep-alive.
	ReadIdleTimeout time.Duration
	// PingTimeout: close the connection when a PING is not answered within
	// it; 0 means 15s.
	PingTimeout time.Duration
	// Logger receives connection-level events; nil discards them.
	Logger *slog.Logger
}

// Pool dials HBONE streams, multiplexing them over pooled connections per
// Key. Its methods are safe for concurrent use.
type Pool struct {
	cfg PoolConfig
	log *slog.Logger

	mu      sync.Mutex
	closed  bool
	entries map[Key]*poolEntry
}

type poolEntry struct {
	conns   []*conn
	dialing *dialCall
}

type dialCall struct {
	done chan struct{}
	err  error
}

// NewPool checks cfg and returns a Pool.
func NewPool(cfg PoolConfig) (*Pool, error) {
	switch {
	case cfg.TrustBundle == nil:
		return nil, errors.New("hbone pool config: TrustBundle is required")
	case cfg.ClientCertificate == nil:
		return nil, errors.New("hbone pool config: ClientCertificate is required")
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.ReadIdleTimeout == 0 {
		cfg.ReadIdleTimeout = 30 * time.Second
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Pool{cfg: cfg, log: cfg.Logger, entries: make(map[Key]*poolEntry)}, nil
}

// Dial opens a CONNECT stream to authority through the HBONE server at
// key.Addr, which must prove to be key.Destination, presenting key.Source's
// certificate. It returns once the server answered 2xx; a refusal is a
// *RejectedError. Errors name the hop: "hbone to <addr> as <source>: ...".
func (p *Pool) Dial(ctx context.Context, key Key, authority netip.AddrPort, h Headers) (*Stream, error) {
	s, err := p.dial(ctx, key, authority, h)
	if err != nil {
		return nil, fmt.Errorf("hbone to %s as %s: %w", key.Addr, key.Source, err)
	}
	return s, nil
}

func (p *Pool) dial(ctx context.Context, key Key, authority netip.AddrPort, h Headers) (*Stream, error) {
	if !authority.IsValid() {
		return nil, fmt.Errorf("invalid authority %v", authority)
	}
	for _, v := range []string{h.Forwarded, h.Baggage, h.Traceparent} {
		if !httpguts.ValidHeaderFieldValue(v) {
			return nil, fmt.Errorf("invalid header value %q", v)
		}
	}
	fields := requestFields(authority, h)
	var avoid *conn // a connection that refused this request
	for attempt := 0; ; attempt++ {
		c, err := p.getConn(ctx, key, avoid)
		if err != nil {
			return nil, err
		}
		s, err := c.openStream(ctx, fields)
		if err == nil {
			return s, nil
		}
		if ctx.Err() == nil {
			// A server refuses a stream when its handlers in flight are at
			// the limit, which this side cannot see (handlers outlive the
			// streams they served): retry once on another connection.
			if refused(err) && avoid == nil {
				avoid = c
				continue
			}
			if retryable(err) && attempt < 3 {
				continue
			}
		}
		return nil, fmt.Errorf("CONNECT %s: %w", authority, err)
	}
}

// refused reports a stream the server refused with REFUSED_STREAM: it was
// not processed (RFC 9113 section 8.7), so it is safe to retry.
func refused(err error) bool {
	var re resetError
	return errors.As(err, &re) && re.code == http2.ErrCodeRefusedStream
}

// retryable reports errors after which the request was certainly not
// processed, so it may be tried again.
func retryable(err error) bool {
	return errors.Is(err, ErrGoAway) || errors.Is(err, errNoCapacity)
}

var errNoCapacity = errors.New("connection cannot open more streams")

// getConn returns a connection other than avoid (which may be nil) with one
// stream reserved for the caller, dialing one when none has room.
func (p *Pool) getConn(ctx context.Context, key Key, avoid *conn) (*conn, error) {
	p.mu.Lock()
	for {
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		e := p.entries[key]
		if e == nil {
			e = &poolEntry{}
			p.entries[key] = e
		}
		for _, c := range e.conns {
			if c != avoid && c.tryReserve(p.cfg.MaxStreamsPerConn) {
				p.mu.Unlock()
				return c, nil
			}
		}
		if d := e.dialing; d != nil {
			p.mu.Unlock()
			select {
			case <-d.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			p.mu.Lock()
			if d.err != nil && !isContextErr(d.err) {
				p.mu.Unlock()
				return nil, d.err
			}
			continue
		}
		d := &dialCall{done: make(chan struct{})}
		e.dialing = d
		p.mu.Unlock()
		c, err := p.connect(ctx, key)
		p.mu.Lock()
		e.dialing = nil
		d.err = err
		close(d.done)
		if err != nil {
			if len(e.conns) == 0 && p.entries[key] == e {
				delete(p.entries, key)
			}
			p.mu.Unlock()
			return nil, err
		}
		if p.closed {
			p.mu.Unlock()
			c.closeWith(ErrPoolClosed)
			return nil, ErrPoolClosed
		}
		e.conns = append(e.conns, c)
		if c.tryReserve(p.cfg.MaxStreamsPerConn) {
			p.mu.Unlock()
			return c, nil
		}
	}
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// connect dials, handshakes and waits for the server's SETTINGS.
func (p *Pool) connect(ctx context.Context, key Key) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout)
	defer cancel()
	nc, err := p.cfg.Dialer.DialContext(ctx, "tcp", key.Addr.String())
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	bc := &batchConn{Conn: nc}
	tc := tls.Client(bc, clientTLSConfig(&p.cfg, key.Source, key.Destination))
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetWriteDeadline(time.Time{}) // the read deadline bounds the server's SETTINGS
	c := newConn(tc, bc, true, key.Destination, 0, p.log)
	c.onGone = func(c *conn) { p.remove(key, c) }
	if err := c.start(); err != nil {
		c.closeWith(err)
		return nil, err
	}
	select {
	case <-c.gotSettings:
	case <-c.done:
		return nil, fmt.Errorf("waiting for server SETTINGS: %w", c.closeErr)
	case <-ctx.Done():
		c.closeWith(ctx.Err())
		return nil, fmt.Errorf("waiting for server SETTINGS: %w", ctx.Err())
	}
	if p.cfg.ReadIdleTimeout > 0 {
		go c.keepalive(p.cfg.ReadIdleTimeout, p.cfg.PingTimeout)
	}
	return c, nil
}

// remove evicts c from the pool; it takes no new streams.
func (p *Pool) remove(key Key, c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.entries[key]
	if e == nil {
		return
	}
	for i, x := range e.conns {
		if x == c {
			e.conns = append(e.conns[:i], e.conns[i+1:]...)
			break
		}
	}
	if len(e.conns) == 0 && e.dialing == nil {
		delete(p.entries, key)
	}
}

// Close closes every pooled connection (their streams fail) and makes
// later Dials fail with ErrPoolClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	var conns []*conn
	for _, e := range p.entries {
		conns = append(conns, e.conns...)
	}
	p.entries = make(map[Key]*poolEntry)
	p.mu.Unlock()
	for _, c := range conns {
		c.closeWith(ErrPoolClosed)
	}
	return nil
}

// tryReserve promises the caller one stream on c, if c has room.
func (c *conn) tryReserve(limit uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.goAwayRecv || c.goAwaySent {
		return false
	}
	max := c.peerMaxStreams
	if limit > 0 && limit < max {
		max = limit
	}
	if uint32(c.active+c.reserved) >= max || c.nextID+2*uint32(c.reserved) > maxStreamID {
		return false
	}
	c.reserved++
	return true
}

const maxStreamID = 1<<31 - 1

// openStream uses a reservation from tryReserve to open a CONNECT stream and
// waits for the response.
func (c *conn) openStream(ctx context.Context, fields []hpack.HeaderField) (*Stream, error) {
	var s *Stream
	var refused error
	err := c.write(func() error {
		c.mu.Lock()
		c.reserved--
		switch {
		case c.closed:
			refused = fmt.Errorf("%w: %w", errNoCapacity, c.closeErr)
		case c.goAwayRecv || c.nextID > maxStreamID:
			refused = fmt.Errorf("%w: %w", errNoCapacity, ErrGoAway)
		}
		if refused != nil {
			c.mu.Unlock()
			return nil
		}
		id := c.nextID
		c.nextID += 2
		s = c.addStreamLocked(id)
		c.mu.Unlock()
		return c.writeHeadersLocked(id, fields, false)
	})
	if refused != nil {
		return nil, refused
	}
	if err != nil {
		if s == nil {
			c.mu.Lock()
			c.reserved--
			c.mu.Unlock()
		}
		return nil, err
	}
	select {
	case <-s.respCh:
	case <-ctx.Done():
		s.Close()
		return nil, ctx.Err()
	}
	c.mu.Lock()
	status, gotResponse, rerr := s.status, s.gotResponse, s.resetErr
	c.mu.Unlock()
	if !gotResponse {
		s.Close()
		return nil, rerr
	}
	if status/100 == 2 {
		return s, nil
	}
	// Collect the reason the server gave, briefly.
	_ = s.SetReadDeadline(time.Now().Add(time.Second))
	body, _ := io.ReadAll(io.LimitReader(s, maxReasonLen+1))
	s.Close()
	return nil, &RejectedError{Status: status, Reason: strings.TrimSpace(string(body))}
}
