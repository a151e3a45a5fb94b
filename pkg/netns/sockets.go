package netns

import (
	"context"
	"fmt"
	"net"
	"os"
)

// Sockets creates sockets inside one network namespace: the socket factory
// ztunnel uses for in-pod listeners and connections. The zero ListenConfig and
// Dialer are valid. Sockets is safe for concurrent use if its fields are not
// modified; it does not own NS.
type Sockets struct {
	NS           *os.File
	ListenConfig net.ListenConfig
	Dialer       net.Dialer
}

// Listen creates a stream listener in s.NS. It runs s.ListenConfig.Listen
// inside Do: socket, bind and listen do not block, so the thread is held
// only for the call.
func (s *Sockets) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var ln net.Listener
	err := Do(s.NS, func() error {
		var err error
		ln, err = s.ListenConfig.Listen(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s %s in network namespace %s: %w", network, address, s.NS.Name(), err)
	}
	return ln, nil
}

// ListenPacket creates a packet socket in s.NS.
func (s *Sockets) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := Do(s.NS, func() error {
		var err error
		pc, err = s.ListenConfig.ListenPacket(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s %s in network namespace %s: %w", network, address, s.NS.Name(), err)
	}
	return pc, nil
}

// Dial connects from s.NS.
//
// For "tcp", "tcp4" and "tcp6" the socket is created in s.NS by the
// package's small pool of namespace-switching threads (see Socket) and
// connected on the caller's goroutine without holding any OS thread while
// the connect is in progress, so concurrent dials cost no threads. address
// must be a literal IP:port (ErrNotLiteralIP otherwise). s.Dialer's
// Control or ControlContext runs on the socket before it connects;
// Timeout, Deadline, LocalAddr and the keep-alive settings apply; the
// resolver and Happy Eyeballs settings do not. Errors match what
// net.Dialer returns: errors.Is finds the connect errno (ECONNREFUSED),
// context.Canceled, or context.DeadlineExceeded and os.ErrDeadlineExceeded
// on a timeout; the connection is a *net.TCPConn.
//
// Other networks ("udp", "unix", ...) never block in connect and run the
// whole net.Dialer dial inside Do.
func (s *Sockets) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var (
		c   net.Conn
		err error
	)
	switch network {
	case "tcp", "tcp4", "tcp6":
		c, err = dialTCP(ctx, s.NS, &s.Dialer, network, address)
	default:
		d := s.Dialer
		d.FallbackDelay = -1
		err = Do(s.NS, func() error {
			var err error
			c, err = d.DialContext(ctx, network, address)
			return err
		})
	}
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s from network namespace %s: %w", network, address, s.NS.Name(), err)
	}
	return c, nil
}

// ListenIn creates a stream listener with default options in ns.
func ListenIn(ctx context.Context, ns *os.File, network, address string) (net.Listener, error) {
	s := Sockets{NS: ns}
	return s.Listen(ctx, network, address)
}

// DialIn connects from ns with default dialer options.
func DialIn(ctx context.Context, ns *os.File, network, address string) (net.Conn, error) {
	s := Sockets{NS: ns}
	return s.Dial(ctx, network, address)
}
