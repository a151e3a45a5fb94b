package hbone

import (
	"encoding/binary"
	"net"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Protocol parameters both sides advertise.
const (
	// maxFrameSize is the largest frame this side accepts and the largest
	// DATA frame it sends when the peer allows it.
	maxFrameSize = 1 << 20
	// streamWindow is the receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE).
	streamWindow = 4 << 20
	// connWindow is the connection-level receive window.
	connWindow = 16 << 20
	// defaultInitialWindow is HTTP/2's initial window before SETTINGS.
	defaultInitialWindow = 65535
	// maxHeaderListSize bounds a decoded header block.
	maxHeaderListSize = 16 << 10
	// DefaultMaxConcurrentStreams is what a Server advertises by default.
	DefaultMaxConcurrentStreams = 1000
	// maxQueuedControl bounds control frames waiting to be written; a peer
	// that makes us queue more (PING or SETTINGS floods while not reading)
	// is cut off with ENHANCE_YOUR_CALM.
	maxQueuedControl = 4096

	readBufSize    = 64 << 10
	writeBufSize   = 64 << 10
	lowerBatchSize = 256 << 10
)

// batchConn sits under tls.Conn and gathers the TLS records written during
// one batch (between begin and flush) into one socket write. Outside a batch
// (handshake, alerts, key updates) it writes through.
type batchConn struct {
	net.Conn
	mu  sync.Mutex
	on  bool
	buf []byte
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.on {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		return b.Conn.Write(p)
	}
	if len(b.buf)+len(p) > lowerBatchSize {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) >= lowerBatchSize {
			return b.Conn.Write(p)
		}
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *batchConn) begin() {
	b.mu.Lock()
	b.on = true
	b.mu.Unlock()
}

func (b *batchConn) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.on = false
	return b.flushLocked()
}

func (b *batchConn) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// ctrlFrame is a small frame queued by the read loop (which never writes
// to the socket itself) or by readers returning window.
type ctrlFrame struct {
	typ    http2.FrameType
	ack    bool
	stream uint32
	val    uint32 // WINDOW_UPDATE increment, RST_STREAM code
	data   [8]byte
}

// write runs fn with exclusive access to the frame writer, then writes any
// queued control frames, and flushes when no other writer is waiting, so
// bursts of frames from many goroutines leave in one syscall. fn's error is
// a write error and kills the connection.
func (c *conn) write(fn func() error) error {
	c.wpending.Add(1)
	c.wmu.Lock()
	if c.werr != nil {
		c.wpending.Add(-1)
		err := c.werr
		c.wmu.Unlock()
		return err
	}
	if c.lower != nil {
		c.lower.begin()
	}
	var err error
	if fn != nil {
		err = fn()
	}
	if err == nil {
		err = c.writeCtrlLocked()
	}
	if c.wpending.Add(-1) == 0 && err == nil {
		err = c.bw.Flush()
		if err == nil && c.lower != nil {
			err = c.lower.flush()
		}
	}
	if err != nil {
		c.werr = err
	}
	c.wmu.Unlock()
	if err != nil {
		c.closeWith(err)
	}
	return err
}

// writeFinal runs fn (the last frame: GOAWAY) with exclusive access to the
// frame writer and flushes it at once, even when other writers wait; later
// writes fail with ErrConnClosed.
func (c *conn) writeFinal(fn func() error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	err := fn()
	if err == nil {
		err = c.bw.Flush()
	}
	if err == nil && c.lower != nil {
		err = c.lower.flush()
	}
	c.werr = ErrConnClosed
	return err
}

// queueCtrl queues a control frame and wakes the write loop. It never blocks
// on the socket.
func (c *conn) queueCtrl(f ctrlFrame) {
	c.ctrlMu.Lock()
	n := len(c.ctrl)
	if n < maxQueuedControl {
		c.ctrl = append(c.ctrl, f)
	}
	c.ctrlMu.Unlock()
	if n >= maxQueuedControl {
		if c.ctrlOverflow.CompareAndSwap(false, true) {
			go c.goAwayAndClose(connError{code: http2.ErrCodeEnhanceYourCalm,
				reason: "too many queued control frames", limit: LimitControlQueue})
		}
		return
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *conn) writeCtrlLocked() error {
	c.ctrlMu.Lock()
	q := c.ctrl
	c.ctrl = c.ctrlSpare[:0]
	c.ctrlMu.Unlock()
	var err error
	for i := range q {
		f := &q[i]
		switch f.typ {
		case http2.FrameWindowUpdate:
			err = c.fr.WriteWindowUpdate(f.stream, f.val)
		case http2.FramePing:
			err = c.fr.WritePing(f.ack, f.data)
		case http2.FrameSettings:
			err = c.fr.WriteSettingsAck()
		case http2.FrameRSTStream:
			err = c.fr.WriteRSTStream(f.stream, http2.ErrCode(f.val))
		}
		if err != nil {
			break
		}
	}
	c.ctrlSpare = q[:0]
	return err
}

// writeLoop writes queued control frames when no data writer is around to
// carry them.
func (c *conn) writeLoop() {
	for {
		select {
		case <-c.done:
			return
		case <-c.kick:
		}
		if c.write(nil) != nil {
			return
		}
	}
}

// writeDataLocked writes one DATA frame without copying data through the
// framer's buffer. Call within write.
func (c *conn) writeDataLocked(id uint32, data []byte, end bool) error {
	h := c.hdr[:]
	n := len(data)
	h[0], h[1], h[2] = byte(n>>16), byte(n>>8), byte(n)
	h[3] = byte(http2.FrameData)
	h[4] = 0
	if end {
		h[4] = byte(http2.FlagDataEndStream)
	}
	binary.BigEndian.PutUint32(h[5:], id&(1<<31-1))
	if _, err := c.bw.Write(h); err != nil {
		return err
	}
	_, err := c.bw.Write(data)
	return err
}

// writeHeadersLocked hpack-encodes fields and writes HEADERS (plus
// CONTINUATION when the block exceeds the peer's frame size). Call within
// write.
func (c *conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, end bool) error {
	if v := c.peerTableSize.Swap(-1); v >= 0 {
		c.henc.SetMaxDynamicTableSizeLimit(uint32(v))
	}
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	max := int(c.peerMaxFrame.Load())
	first := block
	if len(first) > max {
		first = first[:max]
	}
	block = block[len(first):]
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0,
	}); err != nil {
		return err
	}
	for len(block) > 0 {
		frag := block
		if len(frag) > max {
			frag = frag[:max]
		}
		block = block[len(frag):]
		if err := c.fr.WriteContinuation(id, len(block) == 0, frag); err != nil {
			return err
		}
	}
	return nil
}
