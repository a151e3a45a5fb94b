package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotLiteralIP is returned by Dial for an address whose host is not a
// literal IP: names would be resolved in the caller's namespace, not the
// target's.
var ErrNotLiteralIP = errors.New("address is not a literal IP:port (Dial in a network namespace does not resolve names; resolve first)")

// dialTCP connects a TCP socket created in ns (through the socket pool) to
// address, on the caller's goroutine: a non-blocking connect, then a wait
// for writability in Go's poller. It honours ctx and d's Timeout,
// Deadline, LocalAddr, Control/ControlContext (run on the socket before it
// connects) and KeepAlive/KeepAliveConfig; it ignores the resolver and
// Happy Eyeballs settings (one literal address). Errors are *net.OpError
// as net.Dialer returns them: errors.Is matches the connect errno
// (ECONNREFUSED, ...), context.Canceled after ctx is cancelled, and
// context.DeadlineExceeded and os.ErrDeadlineExceeded (Timeout() true)
// after a deadline.
func dialTCP(ctx context.Context, ns *os.File, d *net.Dialer, network, address string) (net.Conn, error) {
	ap, err := parseAddrPort(address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	raddr := net.TCPAddrFromAddrPort(ap)
	opErr := func(err error) error { return &net.OpError{Op: "dial", Net: network, Addr: raddr, Err: err} }

	family, ctrlNet := unix.AF_INET6, "tcp6"
	if ap.Addr().Is4() {
		family, ctrlNet = unix.AF_INET, "tcp4"
	}
	if network == "tcp4" && family != unix.AF_INET || network == "tcp6" && family != unix.AF_INET6 {
		return nil, opErr(fmt.Errorf("address %s does not belong to network %s", ap.Addr(), network))
	}
	if err := ctx.Err(); err != nil {
		return nil, opErr(mapContextErr(err))
	}
	deadline := dialDeadline(ctx, d)

	fd, err := socketFd(ns, family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, opErr(err)
	}
	f := os.NewFile(uintptr(fd), "tcp "+address)
	defer f.Close() // the connection holds its own descriptor (net.FileConn dups)
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, opErr(err)
	}

	switch {
	case d.ControlContext != nil:
		err = d.ControlContext(ctx, ctrlNet, raddr.String(), rc)
	case d.Control != nil:
		err = d.Control(ctrlNet, raddr.String(), rc)
	}
	if err != nil {
		return nil, opErr(err)
	}
	if d.LocalAddr != nil {
		if err := bindLocal(rc, family, d.LocalAddr); err != nil {
			return nil, opErr(err)
		}
	}

	sa := sockaddrOf(ap)
	var cerr error
	if err := rc.Control(func(fd uintptr) { cerr = unix.Connect(int(fd), sa) }); err != nil {
		return nil, opErr(err)
	}
	switch cerr {
	case nil, unix.EISCONN:
	case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
		if err := waitConnected(ctx, f, rc, deadline); err != nil {
			return nil, opErr(err)
		}
	default:
		return nil, opErr(os.NewSyscallError("connect", cerr))
	}

	c, err := net.FileConn(f)
	if err != nil {
		return nil, opErr(err)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok { // cannot happen for a TCP socket; keep the contract anyway
		c.Close()
		return nil, opErr(fmt.Errorf("socket became %T, not a TCP connection", c))
	}
	if ka, ok := keepAlive(d); ok {
		if err := tc.SetKeepAliveConfig(ka); err != nil {
			tc.Close()
			return nil, opErr(err)
		}
	}
	return tc, nil
}

// waitConnected waits in the poller until the connect in progress on f
// ends, ctx is done or deadline passes.
func waitConnected(ctx context.Context, f *os.File, rc syscall.RawConn, deadline time.Time) error {
	if !deadline.IsZero() {
		if err := f.SetWriteDeadline(deadline); err != nil {
			return err
		}
	}
	var fired chan struct{}
	stop := func() bool { return true }
	if ctx.Done() != nil {
		fired = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			_ = f.SetWriteDeadline(time.Unix(1, 0)) // wakes the waiter below
			close(fired)
		})
	}
	var cerr error
	werr := rc.Write(func(fd uintptr) bool {
		n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			cerr = os.NewSyscallError("getsockopt", err)
			return true
		}
		switch e := unix.Errno(n); e {
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		case 0, unix.EISCONN:
			// Writable with no error can also be a spurious wakeup:
			// connected only once the socket has a peer.
			_, err := unix.Getpeername(int(fd))
			return err == nil
		default:
			cerr = os.NewSyscallError("connect", e)
			return true
		}
	})
	if !stop() {
		<-fired
		return mapContextErr(ctx.Err())
	}
	if werr != nil {
		if errors.Is(werr, os.ErrDeadlineExceeded) {
			return errDialTimeout
		}
		return werr
	}
	if cerr != nil {
		return cerr
	}
	return f.SetWriteDeadline(time.Time{})
}

// dialDeadline is the earliest of ctx's deadline, d.Deadline and now plus
// d.Timeout; zero if none is set.
func dialDeadline(ctx context.Context, d *net.Dialer) time.Time {
	var dl time.Time
	earlier := func(t time.Time) {
		if !t.IsZero() && (dl.IsZero() || t.Before(dl)) {
			dl = t
		}
	}
	if d.Timeout > 0 {
		earlier(time.Now().Add(d.Timeout))
	}
	earlier(d.Deadline)
	if t, ok := ctx.Deadline(); ok {
		earlier(t)
	}
	return dl
}

// keepAlive mirrors net.Dialer's keep-alive defaults: on unless KeepAlive
// is negative, with KeepAliveConfig taking precedence when enabled.
func keepAlive(d *net.Dialer) (net.KeepAliveConfig, bool) {
	if d.KeepAliveConfig.Enable {
		return d.KeepAliveConfig, true
	}
	if d.KeepAlive < 0 {
		return net.KeepAliveConfig{}, false
	}
	// Zero Idle and Interval mean the defaults (15 s), as in net.Dialer.
	return net.KeepAliveConfig{Enable: true, Idle: d.KeepAlive, Interval: d.KeepAlive, Count: -1}, true
}

func parseAddrPort(address string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %q", ErrNotLiteralIP, address)
	}
	if z := ip.Zone(); z != "" {
		if _, err := strconv.ParseUint(z, 10, 32); err != nil {
			return netip.AddrPort{}, fmt.Errorf("%w: zone %q must be an interface index in %q", ErrNotLiteralIP, z, address)
		}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: port %q must be numeric", ErrNotLiteralIP, port)
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(p)), nil
}

func sockaddrOf(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if z := ap.Addr().Zone(); z != "" {
		id, _ := strconv.ParseUint(z, 10, 32) // checked by parseAddrPort
		sa.ZoneId = uint32(id)
	}
	return sa
}

func bindLocal(rc syscall.RawConn, family int, la net.Addr) error {
	ta, ok := la.(*net.TCPAddr)
	if !ok {
		return fmt.Errorf("local address %v is a %T, want *net.TCPAddr", la, la)
	}
	var sa unix.Sockaddr
	ip, ok := netip.AddrFromSlice(ta.IP)
	switch {
	case ta.IP == nil && family == unix.AF_INET:
		sa = &unix.SockaddrInet4{Port: ta.Port}
	case ta.IP == nil:
		sa = &unix.SockaddrInet6{Port: ta.Port}
	case ok && family == unix.AF_INET && ip.Unmap().Is4():
		sa = &unix.SockaddrInet4{Port: ta.Port, Addr: ip.Unmap().As4()}
	case ok && family == unix.AF_INET6 && !ip.Unmap().Is4():
		sa = &unix.SockaddrInet6{Port: ta.Port, Addr: ip.As16()}
	default:
		return fmt.Errorf("local address %v is not of the remote address's family", la)
	}
	var berr error
	if err := rc.Control(func(fd uintptr) { berr = unix.Bind(int(fd), sa) }); err != nil {
		return err
	}
	if berr != nil {
		return os.NewSyscallError("bind", berr)
	}
	return nil
}

// dialError is what net.Dialer returns when a dial's deadline passes or
// its context is cancelled.
type dialError struct {
	msg     string
	timeout bool
	target  error
}

var (
	errDialTimeout  = &dialError{msg: "i/o timeout", timeout: true, target: context.DeadlineExceeded}
	errDialCanceled = &dialError{msg: "operation was canceled", target: context.Canceled}
)

func (e *dialError) Error() string   { return e.msg }
func (e *dialError) Timeout() bool   { return e.timeout }
func (e *dialError) Temporary() bool { return e.timeout }
func (e *dialError) Is(target error) bool {
	return target == e.target || e.timeout && target == os.ErrDeadlineExceeded
}

func mapContextErr(err error) error {
	switch err {
	case context.Canceled:
		return errDialCanceled
	case context.DeadlineExceeded:
		return errDialTimeout
	}
	return err
}
