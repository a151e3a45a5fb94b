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

// Listen creates a stream listener in s.NS.
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

// Dial connects from s.NS. The whole dial, connect included, runs on the
// thread switched into s.NS, so it holds that thread until ctx or the
// Dialer's timeout ends it. address should hold a literal IP: a name would
// be resolved by resolver goroutines in the caller's namespace. Dial turns
// off Happy Eyeballs, whose parallel attempts would run on other threads.
func (s *Sockets) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	d := s.Dialer
	d.FallbackDelay = -1
	var c net.Conn
	err := Do(s.NS, func() error {
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
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
