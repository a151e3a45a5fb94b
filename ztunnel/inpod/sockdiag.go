package inpod

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/pkg/netns"
)

// tcpListener is one listening TCP socket of a namespace, as sock_diag
// reports it.
type tcpListener struct {
	Addr  netip.AddrPort
	Inode uint32
	UID   uint32
	// Mark is the socket's SO_MARK; HasMark is false when the kernel did
	// not report it (the asker lacks CAP_NET_ADMIN).
	Mark    uint32
	HasMark bool
}

// sockDiag lists the TCP listeners of the namespace its netlink socket was
// created in. Not safe for concurrent use.
type sockDiag struct {
	f   *os.File
	rc  syscall.RawConn
	seq uint32
	buf []byte
}

// Constants of linux/inet_diag.h and linux/sock_diag.h not in x/sys/unix.
const (
	inetDiagReqV2Len = 56
	inetDiagMsgLen   = 72
	inetDiagMark     = 15 // INET_DIAG_MARK
	tcpListen        = 10 // TCP_LISTEN
)

// openSockDiag opens a NETLINK_SOCK_DIAG socket inside ns through the
// netns socket pool.
func openSockDiag(ns *os.File) (*sockDiag, error) {
	f, err := netns.Socket(ns, unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &sockDiag{f: f, rc: rc, buf: make([]byte, 32<<10)}, nil
}

func (d *sockDiag) Close() error { return d.f.Close() }

// listeners returns the namespace's listening TCP sockets, IPv4 and IPv6.
func (d *sockDiag) listeners(timeout time.Duration) ([]tcpListener, error) {
	if err := d.f.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	var out []tcpListener
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		ls, err := d.dump(family)
		if err != nil {
			return nil, fmt.Errorf("listing TCP listeners (sock_diag, family %d): %w", family, err)
		}
		out = append(out, ls...)
	}
	return out, nil
}

func (d *sockDiag) dump(family uint8) ([]tcpListener, error) {
	d.seq++
	req := make([]byte, unix.SizeofNlMsghdr+inetDiagReqV2Len)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], d.seq)
	r := req[unix.SizeofNlMsghdr:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 1<<tcpListen) // idiag_states

	var serr error
	if err := d.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, os.NewSyscallError("sendto", serr)
	}

	var out []tcpListener
	for {
		var (
			n    int
			rerr error
		)
		if err := d.rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), d.buf, 0)
			return rerr != unix.EAGAIN
		}); err != nil {
			return nil, err
		}
		if rerr != nil {
			return nil, os.NewSyscallError("recvfrom", rerr)
		}
		msgs, err := syscall.ParseNetlinkMessage(d.buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Header.Seq != d.seq {
				continue // left over from an earlier, abandoned dump
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(ne.Uint32(m.Data)); errno != 0 {
						return nil, syscall.Errno(-errno)
					}
				}
				return nil, errors.New("netlink error message")
			case unix.SOCK_DIAG_BY_FAMILY:
				l, err := parseInetDiagMsg(m.Data)
				if err != nil {
					return nil, err
				}
				out = append(out, l)
			}
		}
	}
}

// parseInetDiagMsg decodes struct inet_diag_msg and its INET_DIAG_MARK
// attribute.
func parseInetDiagMsg(b []byte) (tcpListener, error) {
	if len(b) < inetDiagMsgLen {
		return tcpListener{}, fmt.Errorf("short inet_diag_msg (%d bytes)", len(b))
	}
	ne := binary.NativeEndian
	port := binary.BigEndian.Uint16(b[4:6])
	var ip netip.Addr
	if b[0] == unix.AF_INET {
		ip = netip.AddrFrom4([4]byte(b[8:12]))
	} else {
		ip = netip.AddrFrom16([16]byte(b[8:24]))
	}
	l := tcpListener{
		Addr:  netip.AddrPortFrom(ip, port),
		UID:   ne.Uint32(b[64:68]),
		Inode: ne.Uint32(b[68:72]),
	}
	for a := b[inetDiagMsgLen:]; len(a) >= 4; {
		alen := int(ne.Uint16(a[0:2]))
		if alen < 4 || alen > len(a) {
			break
		}
		if ne.Uint16(a[2:4]) == inetDiagMark && alen >= 8 {
			l.Mark, l.HasMark = ne.Uint32(a[4:8]), true
		}
		a = a[min(len(a), (alen+3)&^3):]
	}
	return l, nil
}

// socketInode returns the inode of a listener's socket, which is what
// sock_diag reports as idiag_inode.
func socketInode(ln net.Listener) (uint32, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return 0, fmt.Errorf("listener %T has no descriptor", ln)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, os.NewSyscallError("fstat", serr)
	}
	return uint32(st.Ino), nil
}
