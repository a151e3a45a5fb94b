package sockopt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux option names not exported by x/sys/unix.
const (
	soOriginalDst     = 80 // SO_ORIGINAL_DST, level SOL_IP
	ip6tSoOriginalDst = 80 // IP6T_SO_ORIGINAL_DST, level SOL_IPV6
)

// ErrNoOriginalDst is returned when the connection was not redirected by
// netfilter NAT (no conntrack entry with a rewritten destination).
var ErrNoOriginalDst = errors.New("connection has no original destination (not redirected by netfilter)")

// OriginalDst returns the destination a client connected to before a
// netfilter REDIRECT/DNAT rule sent the connection to this socket. c must be
// an accepted *net.TCPConn (or implement syscall.Conn). For an IPv4
// connection on a dual-stack listener the IPv4 option is used; the result is
// always unmapped.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T has no file descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	v4 := true
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok {
		if ap := la.AddrPort(); ap.Addr().Is6() && !ap.Addr().Is4In6() {
			v4 = false
		}
	}
	var (
		res  netip.AddrPort
		gerr error
	)
	if err := rc.Control(func(fd uintptr) { res, gerr = originalDstFd(int(fd), v4) }); err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return res, gerr
}

// OriginalDstFd is OriginalDst on a raw descriptor of the given family.
func OriginalDstFd(fd int, ipv4 bool) (netip.AddrPort, error) { return originalDstFd(fd, ipv4) }

func originalDstFd(fd int, ipv4 bool) (netip.AddrPort, error) {
	var (
		buf   [unix.SizeofSockaddrInet6]byte // large enough for both families
		level = unix.SOL_IP
		opt   = soOriginalDst
		size  = uint32(unix.SizeofSockaddrInet4)
	)
	if !ipv4 {
		level, opt, size = unix.SOL_IPV6, ip6tSoOriginalDst, uint32(unix.SizeofSockaddrInet6)
	}
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		if errno == unix.ENOENT {
			return netip.AddrPort{}, ErrNoOriginalDst
		}
		return netip.AddrPort{}, fmt.Errorf("original destination: getsockopt: %w", errno)
	}
	return parseSockaddr(buf[:size])
}

// parseSockaddr decodes a struct sockaddr_in or sockaddr_in6 as the kernel
// fills it: family in host byte order, port in network byte order.
func parseSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 2 {
		return netip.AddrPort{}, fmt.Errorf("original destination: short sockaddr (%d bytes)", len(b))
	}
	family := binary.NativeEndian.Uint16(b[0:2])
	switch family {
	case unix.AF_INET:
		if len(b) < unix.SizeofSockaddrInet4 {
			return netip.AddrPort{}, fmt.Errorf("original destination: short sockaddr_in (%d bytes)", len(b))
		}
		port := binary.BigEndian.Uint16(b[2:4])
		addr := netip.AddrFrom4([4]byte(b[4:8]))
		return netip.AddrPortFrom(addr, port), nil
	case unix.AF_INET6:
		if len(b) < unix.SizeofSockaddrInet6 {
			return netip.AddrPort{}, fmt.Errorf("original destination: short sockaddr_in6 (%d bytes)", len(b))
		}
		port := binary.BigEndian.Uint16(b[2:4])
		addr := netip.AddrFrom16([16]byte(b[8:24])).Unmap()
		return netip.AddrPortFrom(addr, port), nil
	default:
		return netip.AddrPort{}, fmt.Errorf("original destination: unexpected address family %d", family)
	}
}

// MarkControl returns a Control function for net.Dialer or net.ListenConfig
// that sets SO_MARK on the socket before it connects or binds. Setting a mark
// needs CAP_NET_ADMIN.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("setting SO_MARK %#x: %w", mark, serr)
		}
		return nil
	}
}
