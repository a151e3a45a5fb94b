//go:build linux

package zds

import (
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// packet is one received SEQPACKET message. The receiver owns fds.
type packet struct {
	data []byte
	fds  []int
	// err is set for a packet that arrived but cannot be used (oversized,
	// truncated fds); fds that did arrive are still listed so the caller
	// closes them (or hands them to DecodeRequest, which does).
	err error
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// recvPacket reads one packet from c (honouring c's read deadline) with
// MSG_CMSG_CLOEXEC. It returns io.EOF when the peer closed the connection.
// A transport error is returned as the error; a bad packet is returned with
// packet.err set.
func recvPacket(c *net.UnixConn) (packet, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return packet{}, err
	}
	buf := make([]byte, MaxMessageSize)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	var n, oobn, flags int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
			if rerr != unix.EINTR {
				return rerr != unix.EAGAIN
			}
		}
	})
	if err != nil {
		return packet{}, err
	}
	if rerr != nil {
		return packet{}, fmt.Errorf("recvmsg: %w", rerr)
	}
	var p packet
	if oobn > 0 {
		fds, perr := parseRights(oob[:oobn])
		p.fds = fds
		if perr != nil {
			p.err = perr
		}
	}
	if n == 0 && len(p.fds) == 0 && flags&unix.MSG_TRUNC == 0 {
		return packet{}, io.EOF
	}
	p.data = buf[:n]
	switch {
	case flags&unix.MSG_TRUNC != 0:
		p.err = fmt.Errorf("%w: packet larger than %d bytes", ErrOversized, MaxMessageSize)
	case flags&unix.MSG_CTRUNC != 0:
		p.err = fmt.Errorf("%w: more than %d fds or unexpected control data", ErrTruncated, maxFDs)
	}
	return p, nil
}

// parseRights extracts every SCM_RIGHTS fd from oob; other control messages
// are ignored.
func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: parsing control data: %v", ErrMalformed, err)
	}
	var fds []int
	var firstErr error
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("%w: parsing SCM_RIGHTS: %v", ErrMalformed, err)
		}
		fds = append(fds, got...)
	}
	return fds, firstErr
}

// sendPacket writes data (and fd, if >= 0, as SCM_RIGHTS) as one packet,
// honouring c's write deadline.
func sendPacket(c *net.UnixConn, data []byte, fd int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	var werr error
	err = rc.Write(func(s uintptr) bool {
		for {
			werr = unix.Sendmsg(int(s), data, oob, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
			if werr != unix.EINTR {
				return werr != unix.EAGAIN
			}
		}
	})
	if err != nil {
		return err
	}
	if werr != nil {
		return fmt.Errorf("sendmsg: %w", werr)
	}
	return nil
}

// isClosedErr reports whether err means the connection is gone.
func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET)
}
