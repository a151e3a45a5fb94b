//go:build linux

package attack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Mark is the socket mark ztunnel puts on its own sockets, which capture
// rules let through (DESIGN.md section 2). An attacker root in its pod can
// set it too, and so reach a peer's :15008 without its own ztunnel.
const Mark = 0x539

// Sockets creates TCP sockets inside one network namespace: one goroutine
// locked to an OS thread switched into the namespace makes them (socket(2)
// only), and Dial connects them from the caller's goroutine through the
// runtime's poller. Safe for concurrent use. Close switches the thread back
// to the namespace it came from before unlocking it (that thread may be the
// process's main thread, whose namespace is the one /proc/PID/ns/net shows);
// a thread that cannot be switched back ends with its goroutine.
type Sockets struct {
	// Mark, if not zero, is set as SO_MARK on every socket.
	Mark int

	reqs   chan chan socketResult
	once   sync.Once
	done   chan struct{}
	exited chan struct{}
}

type socketResult struct {
	fd  int
	err error
}

// NewSockets starts the socket thread in ns. The caller keeps ns and may
// close it once NewSockets returned.
func NewSockets(ns *os.File) (*Sockets, error) {
	s := &Sockets{reqs: make(chan chan socketResult), done: make(chan struct{}), exited: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		defer close(s.exited)
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ready <- fmt.Errorf("opening the thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ready <- fmt.Errorf("entering network namespace %s: %w", ns.Name(), err)
			return
		}
		ready <- nil
		s.serve()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and ends with this goroutine
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Sockets) serve() {
	for {
		select {
		case <-s.done:
			return
		case r := <-s.reqs:
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			r <- socketResult{fd, err}
		}
	}
}

// Close stops the socket thread and returns once it left the namespace;
// sockets already made stay valid.
func (s *Sockets) Close() {
	s.once.Do(func() { close(s.done) })
	<-s.exited
}

// ErrClosed: the Sockets was closed.
var ErrClosed = errors.New("attack sockets closed")

func (s *Sockets) socket() (int, error) {
	r := make(chan socketResult, 1)
	select {
	case s.reqs <- r:
	case <-s.done:
		return -1, ErrClosed
	}
	res := <-r
	if res.err != nil {
		return -1, fmt.Errorf("socket: %w", res.err)
	}
	if s.Mark != 0 {
		if err := unix.SetsockoptInt(res.fd, unix.SOL_SOCKET, unix.SO_MARK, s.Mark); err != nil {
			unix.Close(res.fd)
			return -1, fmt.Errorf("setting SO_MARK: %w", err)
		}
	}
	return res.fd, nil
}

// Dial connects a new socket of the namespace to addr (IPv4), waiting at
// most until ctx ends.
func (s *Sockets) Dial(ctx context.Context, addr netip.AddrPort) (*net.TCPConn, error) {
	if !addr.Addr().Is4() {
		return nil, fmt.Errorf("dialing %s: only IPv4 addresses", addr)
	}
	fd, err := s.socket()
	if err != nil {
		return nil, err
	}
	err = unix.Connect(fd, &unix.SockaddrInet4{Addr: addr.Addr().As4(), Port: int(addr.Port())})
	if err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return nil, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	// A non-blocking descriptor: os.NewFile registers it with the poller.
	f := os.NewFile(uintptr(fd), "tcp:"+addr.String())
	defer f.Close()
	if err != nil {
		if err := waitConnected(ctx, f); err != nil {
			return nil, fmt.Errorf("connecting to %s: %w", addr, err)
		}
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("connection to %s: %w", addr, err)
	}
	return c.(*net.TCPConn), nil
}

// waitConnected waits until a non-blocking connect on f completes.
func waitConnected(ctx context.Context, f *os.File) error {
	if d, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var soErr error
	// Checked on every call, the first one included: the poller's
	// readiness is reset before it, so a connect that completed before
	// the wait started must be seen here, not waited for.
	werr := rc.Write(func(fd uintptr) bool {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			soErr = err
		case v != 0:
			soErr = unix.Errno(v)
		default:
			if _, err := unix.Getpeername(int(fd)); err == unix.ENOTCONN {
				return false // still connecting
			} else if err != nil {
				soErr = err
			}
		}
		return true
	})
	if werr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return werr
	}
	return soErr
}
