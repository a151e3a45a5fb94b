package hbone

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// conn is one HTTP/2 connection carrying CONNECT streams, client or server
// side. One goroutine (readLoop) reads frames and never writes to the socket;
// frames are written by whichever goroutine needs them under wmu (see write),
// and control frames by writeLoop.
//
// Lock order: wmu before mu; ctrlMu is a leaf.
type conn struct {
	nc     net.Conn
	lower  *batchConn // nil when nc is not TLS over batchConn
	client bool
	log    *slog.Logger
	peer   spiffe.ID // verified peer identity

	br *bufio.Reader
	fr *http2.Framer // reads owned by readLoop, writes under wmu

	wmu           sync.Mutex
	wpending      atomic.Int32
	bw            *bufio.Writer
	hdr           [9]byte
	henc          *hpack.Encoder
	hbuf          bytes.Buffer
	werr          error
	peerTableSize atomic.Int64 // pending SETTINGS_HEADER_TABLE_SIZE, -1 none
	peerMaxFrame  atomic.Uint32

	ctrlMu          sync.Mutex
	ctrl, ctrlSpare []ctrlFrame
	kick            chan struct{}
	ctrlOverflow    atomic.Bool // the control queue overflowed once

	mu             sync.Mutex
	sendCond       sync.Cond // on mu: send windows changed, stream or conn ended
	streams        map[uint32]*Stream
	sendWin        int64 // connection send window
	recvWin        int64 // bytes the peer may still send on the connection
	unacked        int64 // bytes consumed, not yet returned with WINDOW_UPDATE
	peerInitWin    int64
	peerMaxStreams uint32
	maxStreams     uint32 // advertised limit on peer-initiated streams (server)
	active         int    // open streams
	inflight       int    // server: peer-opened streams whose handler has not returned
	reserved       int    // client: streams promised to Dial callers, not yet opened
	nextID         uint32 // client: next stream ID
	lastPeerID     uint32 // server: highest stream ID the peer opened
	goAwayRecv     bool
	goAwayLast     uint32
	goAwaySent     bool
	fatal          bool // a GOAWAY with an error code is being sent
	closed         bool
	closeErr       error
	settingsSeen   bool
	gotSettings    chan struct{} // closed on the peer's first SETTINGS
	done           chan struct{} // closed when the connection is closed
	pingData       [8]byte
	pingAck        chan struct{}
	framesRead     atomic.Uint64

	// Server side: ctx is the parent of every stream's context; lim bounds
	// abuse (nil: unlimited).
	ctx context.Context
	lim *connLimits
	// newStream serves a stream the peer opened (server). It runs on the
	// read loop and must not block. The stream counts in inflight until
	// handlerDone.
	newStream func(*Stream)
	// onGone runs once when the connection stops taking new streams.
	onGone   func(*conn)
	goneOnce sync.Once
}

func newConn(nc net.Conn, lower *batchConn, client bool, peer spiffe.ID, maxStreams uint32, log *slog.Logger) *conn {
	c := &conn{
		nc: nc, lower: lower, client: client, log: log, peer: peer,
		kick:           make(chan struct{}, 1),
		streams:        make(map[uint32]*Stream),
		sendWin:        defaultInitialWindow,
		recvWin:        connWindow,
		peerInitWin:    defaultInitialWindow,
		peerMaxStreams: math.MaxUint32,
		maxStreams:     maxStreams,
		nextID:         1,
		gotSettings:    make(chan struct{}),
		done:           make(chan struct{}),
		pingAck:        make(chan struct{}, 1),
	}
	c.sendCond.L = &c.mu
	c.br = bufio.NewReaderSize(nc, readBufSize)
	c.bw = bufio.NewWriterSize(nc, writeBufSize)
	c.fr = http2.NewFramer(c.bw, c.br)
	c.fr.SetReuseFrames()
	c.fr.SetMaxReadFrameSize(maxFrameSize)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = maxHeaderListSize
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.peerTableSize.Store(-1)
	c.peerMaxFrame.Store(16384)
	return c
}

// start sends this side's preface, SETTINGS and connection WINDOW_UPDATE and
// starts the read and write loops. A read deadline set on nc beforehand bounds
// the wait for the peer's preface and first SETTINGS; it is cleared after.
func (c *conn) start() error {
	err := c.write(func() error {
		settings := []http2.Setting{
			{ID: http2.SettingInitialWindowSize, Val: streamWindow},
			{ID: http2.SettingMaxFrameSize, Val: maxFrameSize},
			{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize},
		}
		if c.client {
			if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
				return err
			}
			settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
		} else {
			settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.maxStreams})
		}
		if err := c.fr.WriteSettings(settings...); err != nil {
			return err
		}
		return c.fr.WriteWindowUpdate(0, connWindow-defaultInitialWindow)
	})
	if err != nil {
		return fmt.Errorf("writing HTTP/2 preface: %w", err)
	}
	go c.readLoop()
	go c.writeLoop()
	return nil
}

func (c *conn) readLoop() {
	err := c.readFrames()
	var ce connError
	if errors.As(err, &ce) {
		c.goAwayAndClose(ce)
		return
	}
	c.closeWith(err)
}

func (c *conn) readFrames() error {
	if !c.client {
		var p [len(http2.ClientPreface)]byte
		if _, err := io.ReadFull(c.br, p[:]); err != nil {
			return fmt.Errorf("reading HTTP/2 client preface: %w", err)
		}
		if string(p[:]) != http2.ClientPreface {
			return connError{code: http2.ErrCodeProtocol, reason: "bad HTTP/2 client preface"}
		}
	}
	first := true
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if err := c.onStreamError(se); err != nil {
					return err
				}
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				reason := "invalid frame"
				if d := c.fr.ErrorDetail(); d != nil {
					reason = d.Error()
				}
				return connError{code: http2.ErrCode(ce), reason: reason}
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				return connError{code: http2.ErrCodeFrameSize, reason: "frame larger than SETTINGS_MAX_FRAME_SIZE"}
			}
			return fmt.Errorf("reading HTTP/2 frame: %w", err)
		}
		c.framesRead.Add(1)
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				return connError{code: http2.ErrCodeProtocol, reason: "first frame is not SETTINGS"}
			}
			first = false
			_ = c.nc.SetReadDeadline(time.Time{})
		}
		if err := c.handleFrame(f); err != nil {
			return err
		}
	}
}

func (c *conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return c.onReset(f)
	case *http2.PingFrame:
		c.onPing(f)
	case *http2.GoAwayFrame:
		c.onGoAway(f)
	case *http2.PushPromiseFrame:
		return connError{code: http2.ErrCodeProtocol, reason: "PUSH_PROMISE not allowed"}
	case *http2.ContinuationFrame:
		return connError{code: http2.ErrCodeProtocol, reason: "unexpected CONTINUATION"}
	}
	// PRIORITY, PRIORITY_UPDATE and unknown frame types are ignored.
	return nil
}

// isIdleLocked reports whether id names a stream not opened yet.
func (c *conn) isIdleLocked(id uint32) bool {
	if id%2 == 0 {
		return true // neither side opens even streams: push is disabled
	}
	if c.client {
		return id >= c.nextID
	}
	return id > c.lastPeerID
}

// onStreamError resets the stream a malformed frame arrived on. On a server
// a new stream counts as an opening, an open one as a reset the peer caused.
func (c *conn) onStreamError(se http2.StreamError) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	if !c.client && se.StreamID%2 == 1 && se.StreamID > c.lastPeerID {
		c.lastPeerID = se.StreamID
		err = c.lim.allowOpen()
	}
	if s := c.streams[se.StreamID]; s != nil {
		c.terminateLocked(s, fmt.Errorf("%w: %v", ErrStreamReset, se), false)
		if !c.client {
			err = c.lim.allowReset(true)
		}
	}
	c.queueCtrl(ctrlFrame{typ: http2.FrameRSTStream, stream: se.StreamID, val: uint32(se.Code)})
	return err
}

// returnConnWindowLocked credits n consumed bytes to the connection window,
// sending WINDOW_UPDATE once a quarter of the window is owed.
func (c *conn) returnConnWindowLocked(n int64) {
	c.unacked += n
	if c.unacked >= connWindow/4 {
		c.queueCtrl(ctrlFrame{typ: http2.FrameWindowUpdate, val: uint32(c.unacked)})
		c.recvWin += c.unacked
		c.unacked = 0
	}
}

// consumedLocked credits n bytes the application took from s.
func (c *conn) consumedLocked(s *Stream, n int64) {
	c.returnConnWindowLocked(n)
	if s.recvEnd || s.removed {
		return
	}
	s.unacked += n
	if s.unacked >= streamWindow/4 {
		c.queueCtrl(ctrlFrame{typ: http2.FrameWindowUpdate, stream: s.id, val: uint32(s.unacked)})
		s.recvWin += s.unacked
		s.unacked = 0
	}
}

func (c *conn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length)
	data := f.Data()
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > c.recvWin {
		return connError{code: http2.ErrCodeFlowControl, reason: "DATA beyond the connection window"}
	}
	c.recvWin -= n
	s := c.streams[id]
	if s == nil {
		if c.isIdleLocked(id) {
			return connError{code: http2.ErrCodeProtocol, reason: fmt.Sprintf("DATA on idle stream %d", id)}
		}
		c.returnConnWindowLocked(n) // stream closed or reset: ignore
		return nil
	}
	if s.recvEnd {
		c.returnConnWindowLocked(n)
		return c.peerFaultLocked(s, http2.ErrCodeStreamClosed, "DATA after END_STREAM")
	}
	if n > s.recvWin {
		c.returnConnWindowLocked(n)
		return c.peerFaultLocked(s, http2.ErrCodeFlowControl, "DATA beyond the stream window")
	}
	s.recvWin -= n
	if pad := n - int64(len(data)); pad > 0 {
		c.consumedLocked(s, pad)
	}
	if len(data) > 0 {
		s.recvBuf = append(s.recvBuf, data...)
	}
	if f.StreamEnded() {
		s.recvEnd = true
		c.maybeDoneLocked(s)
	}
	s.rcond.Broadcast()
	return nil
}

func (c *conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	if s := c.streams[id]; s != nil {
		defer c.mu.Unlock()
		if c.client && !s.gotResponse {
			status := f.PseudoValue("status")
			code, err := strconv.Atoi(status)
			if err != nil || len(status) != 3 || f.Truncated {
				c.resetLocked(s, http2.ErrCodeProtocol, "malformed response :status")
				return nil
			}
			if code < 200 {
				if f.StreamEnded() || code == 101 {
					c.resetLocked(s, http2.ErrCodeProtocol, "informational response ends stream")
				}
				return nil
			}
			s.gotResponse = true
			s.status = code
			close(s.respCh)
		} else if !f.StreamEnded() {
			return c.peerFaultLocked(s, http2.ErrCodeProtocol, "trailers without END_STREAM")
		}
		if f.StreamEnded() {
			s.recvEnd = true
			c.maybeDoneLocked(s)
			s.rcond.Broadcast()
		}
		return nil
	}
	if c.client {
		idle := c.isIdleLocked(id)
		c.mu.Unlock()
		if idle {
			return connError{code: http2.ErrCodeProtocol, reason: fmt.Sprintf("HEADERS on stream %d the client did not open", id)}
		}
		return nil
	}
	if id%2 == 0 || id <= c.lastPeerID {
		c.mu.Unlock()
		return connError{code: http2.ErrCodeProtocol, reason: fmt.Sprintf("HEADERS opening stream %d out of order", id)}
	}
	c.lastPeerID = id
	if err := c.lim.allowOpen(); err != nil {
		c.mu.Unlock()
		return err
	}
	// The limit counts handlers, not open streams: a stream the peer reset
	// holds its slot until its handler has returned.
	full := uint32(c.inflight) >= c.maxStreams
	if c.goAwaySent || c.closed || full {
		c.queueCtrl(ctrlFrame{typ: http2.FrameRSTStream, stream: id, val: uint32(http2.ErrCodeRefusedStream)})
		c.mu.Unlock()
		if full {
			c.lim.report(LimitRefusedStream)
		}
		return nil
	}
	s := c.addStreamLocked(id)
	s.server = true
	c.inflight++
	s.ctx, s.cancel = context.WithCancel(c.ctx)
	if f.Truncated {
		s.reject = &rejection{431, fmt.Sprintf("request header list exceeds %d bytes", maxHeaderListSize)}
	} else {
		s.req, s.reject = parseRequest(requestHeadersOf(f))
	}
	if s.req != nil {
		s.req.Peer = c.peer
	}
	if f.StreamEnded() {
		s.recvEnd = true
	}
	c.mu.Unlock()
	c.newStream(s)
	return nil
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if err := c.lim.allowSettings(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			code := http2.ErrCodeProtocol
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				code = http2.ErrCode(ce)
			}
			return connError{code: code, reason: fmt.Sprintf("invalid setting %v", st)}
		}
		switch st.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - c.peerInitWin
			c.peerInitWin = int64(st.Val)
			for _, s := range c.streams {
				s.sendWin += delta
				if s.sendWin > math.MaxInt32 {
					return connError{code: http2.ErrCodeFlowControl, reason: "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window"}
				}
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame.Store(st.Val)
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = st.Val
		case http2.SettingHeaderTableSize:
			c.peerTableSize.Store(int64(st.Val))
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.sendCond.Broadcast()
	if !c.settingsSeen {
		c.settingsSeen = true
		close(c.gotSettings)
	}
	c.queueCtrl(ctrlFrame{typ: http2.FrameSettings, ack: true})
	return nil
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWin += inc
		if c.sendWin > math.MaxInt32 {
			return connError{code: http2.ErrCodeFlowControl, reason: "connection window overflow"}
		}
		c.sendCond.Broadcast()
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		if c.isIdleLocked(f.StreamID) {
			return connError{code: http2.ErrCodeProtocol, reason: fmt.Sprintf("WINDOW_UPDATE on idle stream %d", f.StreamID)}
		}
		return nil
	}
	s.sendWin += inc
	if s.sendWin > math.MaxInt32 {
		return c.peerFaultLocked(s, http2.ErrCodeFlowControl, "stream window overflow")
	}
	c.sendCond.Broadcast()
	return nil
}

func (c *conn) onReset(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if s == nil {
		if c.isIdleLocked(f.StreamID) {
			return connError{code: http2.ErrCodeProtocol, reason: fmt.Sprintf("RST_STREAM on idle stream %d", f.StreamID)}
		}
		return nil
	}
	// A reset after a complete response body (e.g. a rejection) keeps the
	// body readable.
	keep := f.ErrCode == http2.ErrCodeNo && s.recvEnd
	c.terminateLocked(s, resetError{f.ErrCode}, keep)
	if c.client {
		return nil
	}
	return c.lim.allowReset(!s.answeredFlag.Load())
}

func (c *conn) onPing(f *http2.PingFrame) {
	if f.IsAck() {
		c.mu.Lock()
		match := f.Data == c.pingData
		c.mu.Unlock()
		if match {
			select {
			case c.pingAck <- struct{}{}:
			default:
			}
		}
		return
	}
	c.queueCtrl(ctrlFrame{typ: http2.FramePing, ack: true, data: f.Data})
}

func (c *conn) onGoAway(f *http2.GoAwayFrame) {
	err := goAwayError{f.ErrCode, string(f.DebugData())}
	if f.ErrCode != http2.ErrCodeNo {
		c.log.Info("hbone peer sent GOAWAY", "peer", c.peer.String(), "code", f.ErrCode.String(), "debug", err.debug)
	}
	c.mu.Lock()
	c.goAwayRecv = true
	c.goAwayLast = f.LastStreamID
	for id, s := range c.streams {
		if c.client && id > f.LastStreamID {
			c.terminateLocked(s, err, false)
		}
	}
	idle := c.active == 0
	c.mu.Unlock()
	c.markGone()
	if idle {
		c.closeWith(err)
	}
}

// addStreamLocked registers a new open stream.
func (c *conn) addStreamLocked(id uint32) *Stream {
	s := newStream(c, id)
	s.sendWin = c.peerInitWin
	c.streams[id] = s
	c.active++
	return s
}

// maybeDoneLocked retires s once both directions have ended.
func (c *conn) maybeDoneLocked(s *Stream) {
	if s.sentEnd && s.recvEnd {
		c.removeLocked(s)
	}
}

func (c *conn) removeLocked(s *Stream) {
	if s.removed {
		return
	}
	s.removed = true
	delete(c.streams, s.id)
	c.active--
	if s.cancel != nil {
		s.cancel()
	}
	// After a graceful GOAWAY the last stream closes the connection; after a
	// fatal one goAwayAndClose does, once the GOAWAY is out.
	if c.active == 0 && (c.goAwayRecv || c.goAwaySent) && !c.closed && !c.fatal {
		go c.closeWith(nil)
	}
}

// terminateLocked ends s with err in both directions (unless it already has
// an error) and retires it. Unread data stays readable when keep is set;
// otherwise it is dropped and its window returned.
func (c *conn) terminateLocked(s *Stream, err error, keep bool) {
	if s.resetErr == nil {
		s.resetErr = err
	}
	if !keep {
		c.discardLocked(s)
	}
	if c.client && !s.gotResponse && !s.respDone {
		s.respDone = true
		close(s.respCh)
	}
	c.removeLocked(s)
	s.rcond.Broadcast()
	c.sendCond.Broadcast()
}

// resetLocked resets s locally with code and tells the peer.
func (c *conn) resetLocked(s *Stream, code http2.ErrCode, reason string) {
	c.terminateLocked(s, fmt.Errorf("%w: %v: %s", ErrStreamClosed, code, reason), false)
	c.queueCtrl(ctrlFrame{typ: http2.FrameRSTStream, stream: s.id, val: uint32(code)})
}

// peerFaultLocked resets s for a stream error the peer made. On a server
// it counts as a premature reset: a peer could otherwise cancel the work
// behind its streams by provoking resets instead of sending them.
func (c *conn) peerFaultLocked(s *Stream, code http2.ErrCode, reason string) error {
	c.resetLocked(s, code, reason)
	if c.client {
		return nil
	}
	return c.lim.allowReset(true)
}

// handlerDone releases the slot of a peer-opened stream whose handler has
// returned.
func (c *conn) handlerDone() {
	c.mu.Lock()
	c.inflight--
	c.mu.Unlock()
}

func (c *conn) discardLocked(s *Stream) {
	if n := len(s.recvBuf) - s.recvOff; n > 0 {
		c.returnConnWindowLocked(int64(n))
	}
	s.recvBuf, s.recvOff = nil, 0
	s.gen++
}

// markGone runs onGone once: the connection takes no more streams.
func (c *conn) markGone() {
	c.goneOnce.Do(func() {
		if c.onGone != nil {
			c.onGone(c)
		}
	})
}

// closeWith closes the connection; open streams fail with err (wrapped in
// ErrConnClosed), keeping already received data readable.
func (c *conn) closeWith(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	switch {
	case err == nil:
		err = ErrConnClosed
	case !errors.Is(err, ErrConnClosed):
		err = fmt.Errorf("%w: %w", ErrConnClosed, err)
	}
	c.closeErr = err
	for _, s := range c.streams {
		c.terminateLocked(s, err, true)
	}
	close(c.done)
	c.sendCond.Broadcast()
	c.mu.Unlock()
	_ = c.nc.Close()
	c.markGone()
}

// goAwayAndClose answers a protocol violation or an exceeded limit: GOAWAY
// with its code, flushed at once, then close. Only the first call acts.
func (c *conn) goAwayAndClose(ce connError) {
	c.mu.Lock()
	if c.closed || c.fatal {
		c.mu.Unlock()
		return
	}
	c.fatal = true
	c.goAwaySent = true
	last := c.lastPeerID
	c.mu.Unlock()
	c.markGone()
	remote := c.nc.RemoteAddr().String()
	if ce.limit != "" {
		c.log.Info("hbone peer exceeded a limit; sent GOAWAY(ENHANCE_YOUR_CALM) and closed the connection",
			"peer", c.peer.String(), "remote", remote, "limit", ce.limit, "reason", ce.reason)
		c.lim.report(ce.limit)
	} else {
		c.log.Debug("hbone protocol error", "peer", c.peer.String(), "remote", remote, "code", ce.code.String(), "reason", ce.reason)
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	_ = c.writeFinal(func() error { return c.fr.WriteGoAway(last, ce.code, []byte(ce.reason)) })
	c.closeWith(ce)
}

// shutdown starts a graceful close: GOAWAY(NO_ERROR), no new streams, close
// when the open ones finish.
func (c *conn) shutdown() {
	c.mu.Lock()
	if c.closed || c.goAwaySent {
		c.mu.Unlock()
		return
	}
	c.goAwaySent = true
	last := c.lastPeerID
	idle := c.active == 0
	c.mu.Unlock()
	c.markGone()
	_ = c.write(func() error { return c.fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
	if idle {
		c.closeWith(nil)
	}
}

// keepalive sends a PING when nothing was read for idle and closes the
// connection when the ack does not come within timeout.
func (c *conn) keepalive(idle, timeout time.Duration) {
	t := time.NewTicker(idle)
	defer t.Stop()
	last := c.framesRead.Load()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		if n := c.framesRead.Load(); n != last {
			last = n
			continue
		}
		c.mu.Lock()
		c.pingData[0]++
		data := c.pingData
		c.mu.Unlock()
		select {
		case <-c.pingAck:
		default:
		}
		c.queueCtrl(ctrlFrame{typ: http2.FramePing, data: data})
		timer := time.NewTimer(timeout)
		select {
		case <-c.done:
			timer.Stop()
			return
		case <-c.pingAck:
			timer.Stop()
			last = c.framesRead.Load()
		case <-timer.C:
			c.closeWith(fmt.Errorf("%w within %v", ErrPingTimeout, timeout))
			return
		}
	}
}
