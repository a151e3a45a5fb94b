package hbone

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// errClosedLocally is what operations on a stream return after Close.
var errClosedLocally = fmt.Errorf("%w: %w", ErrStreamClosed, net.ErrClosed)

// Stream is one CONNECT tunnel over an HBONE connection: a net.Conn whose
// CloseWrite half-closes (END_STREAM) and whose Close aborts what is not
// finished (RST_STREAM CANCEL).
//
// Concurrency: one goroutine may read (Read or WriteTo) while another writes
// (Write, ReadFrom, CloseWrite); Close and the deadline setters may be called
// from any goroutine and unblock both.
type Stream struct {
	c      *conn
	id     uint32
	server bool

	// Server side: set before the stream is registered. ctx is cancelled
	// when the stream is retired (see Handler.ServeHBONE).
	req    *Request
	reject *rejection
	ctx    context.Context
	cancel context.CancelFunc

	respMu       sync.Mutex // serializes answering the CONNECT
	responded    bool
	respErr      error
	answeredFlag atomic.Bool // responded, readable without respMu (read loop)

	sendMu sync.Mutex // serializes Write and CloseWrite

	// Guarded by c.mu.
	rcond       sync.Cond
	recvBuf     []byte // received, unread: recvBuf[recvOff:]
	recvOff     int
	gen         uint32 // bumped when recvBuf is discarded
	recvWin     int64  // bytes the peer may still send
	unacked     int64  // bytes read, not yet returned with WINDOW_UPDATE
	sendWin     int64
	recvEnd     bool // END_STREAM received
	sentEnd     bool // END_STREAM sent (or being sent)
	removed     bool // retired from the connection
	appClosed   bool
	resetErr    error
	rdl, wdl    time.Time
	rtimer      *time.Timer
	wtimer      *time.Timer
	respCh      chan struct{} // client: closed when the response or an error arrives
	gotResponse bool
	respDone    bool
	status      int
}

func newStream(c *conn, id uint32) *Stream {
	s := &Stream{c: c, id: id, recvWin: streamWindow}
	s.rcond.L = &c.mu
	if c.client {
		s.respCh = make(chan struct{})
	}
	return s
}

var _ net.Conn = (*Stream)(nil)

// Request is the CONNECT request a server-side stream carries (nil on the
// client side).
func (s *Stream) Request() *Request { return s.req }

// Peer is the verified SPIFFE ID of the other end of the connection.
func (s *Stream) Peer() spiffe.ID { return s.c.peer }

// LocalAddr is the local address of the underlying connection.
func (s *Stream) LocalAddr() net.Addr { return s.c.nc.LocalAddr() }

// RemoteAddr is the remote address of the underlying connection.
func (s *Stream) RemoteAddr() net.Addr { return s.c.nc.RemoteAddr() }

func expired(t time.Time) bool { return !t.IsZero() && !time.Now().Before(t) }

// Read reads tunnelled bytes; io.EOF after the peer half-closed.
func (s *Stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if s.recvOff < len(s.recvBuf) {
			n := copy(p, s.recvBuf[s.recvOff:])
			s.advanceLocked(n)
			return n, nil
		}
		if err := s.readErrLocked(); err != nil {
			return 0, err
		}
		s.rcond.Wait()
	}
}

// readErrLocked is the error a reader with nothing buffered gets, or nil
// when it should wait.
func (s *Stream) readErrLocked() error {
	switch {
	case s.recvEnd:
		return io.EOF
	case s.resetErr != nil:
		return s.resetErr
	case expired(s.rdl):
		return os.ErrDeadlineExceeded
	}
	return nil
}

// advanceLocked consumes n buffered bytes and credits the windows. Only the
// reader moves recvOff or compacts recvBuf.
func (s *Stream) advanceLocked(n int) {
	s.recvOff += n
	switch {
	case s.recvOff == len(s.recvBuf):
		s.recvBuf, s.recvOff = s.recvBuf[:0], 0
	case s.recvOff > cap(s.recvBuf)/2:
		m := copy(s.recvBuf, s.recvBuf[s.recvOff:])
		s.recvBuf, s.recvOff = s.recvBuf[:m], 0
	}
	s.c.consumedLocked(s, int64(n))
}

// WriteTo writes everything the peer sends to w until the peer half-closes,
// without an intermediate buffer.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	c := s.c
	var total int64
	c.mu.Lock()
	for {
		if s.recvOff < len(s.recvBuf) {
			chunk := s.recvBuf[s.recvOff:]
			gen := s.gen
			c.mu.Unlock()
			n, err := w.Write(chunk)
			total += int64(n)
			c.mu.Lock()
			if gen == s.gen {
				s.advanceLocked(n)
			}
			if err != nil {
				c.mu.Unlock()
				return total, err
			}
			continue
		}
		if err := s.readErrLocked(); err != nil {
			c.mu.Unlock()
			if err == io.EOF {
				err = nil
			}
			return total, err
		}
		s.rcond.Wait()
	}
}

// Write sends p, blocking while the peer's flow-control windows are closed.
// On a server-side stream it first answers the CONNECT with 200 if not done.
func (s *Stream) Write(p []byte) (int, error) {
	if s.server {
		if err := s.Accept(); err != nil {
			return 0, err
		}
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	c := s.c
	total := 0
	for len(p) > 0 {
		n, err := s.awaitSend(len(p))
		if err != nil {
			return total, err
		}
		chunk := p[:n]
		if err := c.write(func() error { return c.writeDataLocked(s.id, chunk, false) }); err != nil {
			return total, err
		}
		total += n
		p = p[n:]
	}
	return total, nil
}

// awaitSend takes up to want bytes of send window (at most one frame).
func (s *Stream) awaitSend(want int) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case s.resetErr != nil:
			return 0, s.resetErr
		case s.sentEnd:
			return 0, ErrWriteAfterCloseWrite
		case c.closed:
			return 0, c.closeErr
		case expired(s.wdl):
			return 0, os.ErrDeadlineExceeded
		}
		if w := min(s.sendWin, c.sendWin); w > 0 {
			n := min(int64(want), w, int64(c.peerMaxFrame.Load()))
			s.sendWin -= n
			c.sendWin -= n
			return int(n), nil
		}
		c.sendCond.Wait()
	}
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// ReadFrom sends everything read from r until io.EOF (it does not half-close).
func (s *Stream) ReadFrom(r io.Reader) (int64, error) {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			m, werr := s.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// CloseWrite half-closes: END_STREAM tells the peer no more bytes come. The
// stream stays readable.
func (s *Stream) CloseWrite() error {
	if s.server {
		if err := s.Accept(); err != nil {
			return err
		}
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	c := s.c
	c.mu.Lock()
	switch {
	case s.sentEnd:
		c.mu.Unlock()
		return nil
	case s.resetErr != nil:
		c.mu.Unlock()
		return s.resetErr
	case c.closed:
		c.mu.Unlock()
		return c.closeErr
	}
	s.sentEnd = true
	c.mu.Unlock()
	err := c.write(func() error { return c.writeDataLocked(s.id, nil, true) })
	c.mu.Lock()
	c.maybeDoneLocked(s)
	c.mu.Unlock()
	return err
}

// Close releases the stream. If either direction has not ended it resets
// the stream (RST_STREAM CANCEL). Buffered unread data is dropped.
func (s *Stream) Close() error {
	c := s.c
	c.mu.Lock()
	if s.appClosed {
		c.mu.Unlock()
		return nil
	}
	s.appClosed = true
	for _, t := range []*time.Timer{s.rtimer, s.wtimer} {
		if t != nil {
			t.Stop()
		}
	}
	rst := !s.removed && !c.closed
	if s.removed {
		c.discardLocked(s)
		if s.resetErr == nil {
			s.resetErr = errClosedLocally
		}
	} else {
		c.terminateLocked(s, errClosedLocally, false)
	}
	c.mu.Unlock()
	if rst {
		c.queueCtrl(ctrlFrame{typ: http2.FrameRSTStream, stream: s.id, val: uint32(http2.ErrCodeCancel)})
	}
	return nil
}

// SetDeadline sets both deadlines.
func (s *Stream) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

// SetReadDeadline bounds Read and WriteTo.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.rdl = t
	s.rtimer = s.armLocked(s.rtimer, t)
	return nil
}

// SetWriteDeadline bounds Write, ReadFrom and CloseWrite's wait for window.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.wdl = t
	s.wtimer = s.armLocked(s.wtimer, t)
	return nil
}

func (s *Stream) armLocked(old *time.Timer, t time.Time) *time.Timer {
	c := s.c
	if old != nil {
		old.Stop()
	}
	s.rcond.Broadcast()
	c.sendCond.Broadcast()
	if t.IsZero() {
		return nil
	}
	d := time.Until(t)
	if d <= 0 {
		return nil
	}
	return time.AfterFunc(d, func() {
		c.mu.Lock()
		s.rcond.Broadcast()
		c.sendCond.Broadcast()
		c.mu.Unlock()
	})
}

// Accept answers a server-side stream's CONNECT with 200; later calls return
// the first answer's error. Write and CloseWrite call it implicitly. It is a
// no-op on client streams.
func (s *Stream) Accept() error { return s.respond(200, "") }

// Reject answers a server-side stream's CONNECT with status (4xx or 5xx) and
// reason as a text body, then ends the stream. It fails if the stream was
// already answered.
func (s *Stream) Reject(status int, reason string) error {
	if status < 400 || status > 599 {
		status = 500
	}
	return s.respond(status, reason)
}

const maxReasonLen = 512

func (s *Stream) respond(status int, reason string) error {
	if !s.server {
		return nil
	}
	s.respMu.Lock()
	defer s.respMu.Unlock()
	if s.responded {
		if status == 200 {
			return s.respErr
		}
		return fmt.Errorf("%w: CONNECT already answered", ErrStreamClosed)
	}
	s.responded = true
	s.answeredFlag.Store(true)
	c := s.c
	fields := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}
	var body []byte
	c.mu.Lock()
	if s.resetErr != nil {
		s.respErr = s.resetErr
		c.mu.Unlock()
		return s.respErr
	}
	if status != 200 {
		fields = append(fields, hpack.HeaderField{Name: "content-type", Value: "text/plain; charset=utf-8"})
		if len(reason) > maxReasonLen {
			reason = reason[:maxReasonLen]
		}
		body = []byte(reason + "\n")
		// Send what the windows allow without waiting; the reason is advisory.
		n := max(0, min(int64(len(body)), s.sendWin, c.sendWin))
		body = body[:n]
		s.sendWin -= n
		c.sendWin -= n
		s.sentEnd = true
	}
	c.mu.Unlock()
	err := c.write(func() error {
		if status == 200 {
			return c.writeHeadersLocked(s.id, fields, false)
		}
		if err := c.writeHeadersLocked(s.id, fields, false); err != nil {
			return err
		}
		if err := c.writeDataLocked(s.id, body, true); err != nil {
			return err
		}
		return c.fr.WriteRSTStream(s.id, http2.ErrCodeNo)
	})
	if status != 200 {
		c.mu.Lock()
		c.terminateLocked(s, fmt.Errorf("%w: CONNECT rejected with status %d", ErrStreamClosed, status), false)
		c.mu.Unlock()
	}
	s.respErr = err
	return err
}

// answered reports whether the CONNECT was answered.
func (s *Stream) answered() bool {
	s.respMu.Lock()
	defer s.respMu.Unlock()
	return s.responded
}
