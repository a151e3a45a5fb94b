//go:build linux

package attack

import (
	"context"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SquatResult is what a foreign SO_REUSEPORT listener got.
type SquatResult struct {
	// Bound is false when the bind was refused (BindError says why): the
	// port could not be squatted.
	Bound     bool   `json:"bound"`
	BindError string `json:"bindError,omitempty"`
	// Accepted counts the connections the squatter took (each closed at
	// once).
	Accepted int64 `json:"accepted"`
}

// Squat listens on addr (e.g. "[::]:15008") with SO_REUSEPORT in the
// caller's network namespace, as an app beside ztunnel would. ready is
// called once the bind succeeded or failed; then it accepts and closes
// connections until hold has passed.
func Squat(addr string, hold time.Duration, ready func(SquatResult)) SquatResult {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	lc.SetMultipathTCP(false)
	ctx, cancel := context.WithTimeout(context.Background(), hold)
	defer cancel()
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		res := SquatResult{BindError: err.Error()}
		ready(res)
		return res
	}
	ready(SquatResult{Bound: true})
	context.AfterFunc(ctx, func() { ln.Close() })
	var n atomic.Int64
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		n.Add(1)
		c.Close()
	}
	return SquatResult{Bound: true, Accepted: n.Load()}
}
