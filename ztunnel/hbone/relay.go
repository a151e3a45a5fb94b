package hbone

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
)

// Relay copies bytes both ways between s and c until both directions have
// ended, passing each half-close on (EOF from c → s.CloseWrite; END_STREAM
// from s → c.CloseWrite when c has one). An error in either direction aborts
// both. It closes s and c before returning, and reports the bytes moved each
// way and the first error.
func Relay(s *Stream, c net.Conn) (toConn, toStream int64, err error) {
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := s.WriteTo(c)
		if err == nil {
			err = closeWrite(c)
		}
		if err != nil {
			s.Close()
			c.Close()
		}
		done <- result{n, err}
	}()
	toStream, err = s.ReadFrom(c)
	if err == nil {
		err = s.CloseWrite()
	}
	if err != nil {
		s.Close()
		c.Close()
	}
	r := <-done
	s.Close()
	c.Close()
	if err == nil {
		err = r.err
	}
	return r.n, toStream, err
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// DialAndRelay connects s to target over TCP with d (nil means a
// *net.Dialer): on success it answers the CONNECT with 200 and relays until
// both directions end; when the dial fails it answers 503 with the reason.
func DialAndRelay(ctx context.Context, d Dialer, s *Stream, target netip.AddrPort) error {
	if d == nil {
		d = &net.Dialer{}
	}
	tc, err := d.DialContext(ctx, "tcp", target.String())
	if err != nil {
		err = fmt.Errorf("dialing %s: %w", target, err)
		_ = s.Reject(http.StatusServiceUnavailable, err.Error())
		return err
	}
	if err := s.Accept(); err != nil {
		tc.Close()
		return err
	}
	if _, _, err := Relay(s, tc); err != nil && err != io.EOF {
		return fmt.Errorf("relaying to %s: %w", target, err)
	}
	return nil
}

// AuthorizeFunc is Handler.Authorize as a function.
type AuthorizeFunc func(ctx context.Context, req *Request) (netip.AddrPort, error)

// RelayHandler returns a Handler that authorizes with authorize and relays
// each accepted stream to its target over TCP dialed with d (nil: *net.Dialer).
func RelayHandler(authorize AuthorizeFunc, d Dialer) Handler {
	return relayHandler{authorize, d}
}

type relayHandler struct {
	authorize AuthorizeFunc
	d         Dialer
}

func (h relayHandler) Authorize(ctx context.Context, req *Request) (netip.AddrPort, error) {
	return h.authorize(ctx, req)
}

func (h relayHandler) ServeHBONE(ctx context.Context, s *Stream) {
	_ = DialAndRelay(ctx, h.d, s, s.Request().Target)
}
