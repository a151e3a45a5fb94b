package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/ctl/local"
	"github.com/ambit-mesh/ambit/e2e/attack"
	"github.com/ambit-mesh/ambit/pkg/netns"
)

// heldAfter is how long after the held connections close the ztunnels'
// figures are read again.
const heldAfter = 10 * time.Second

// heldWorkers open the held connections in parallel.
const heldWorkers = 16

// runHeld prints the ztunnels' threads, open files and RSS at baseline,
// with n connections held open from ns/client to ns/echo's raw echo port
// through the mesh (each checked end to end with a 1-byte round trip), and
// heldAfter after they closed. Opening is bounded by openWithin.
func runHeld(ztunnels map[string]int, ns string, echo netip.Addr, n int, openWithin time.Duration) error {
	nsf, err := netns.OpenName(local.PodNetns(ns, "client"))
	if err != nil {
		return err
	}
	socks, err := attack.NewSockets(nsf)
	nsf.Close()
	if err != nil {
		return err
	}
	defer socks.Close()
	names := []string{"ztunnel-node-a", "ztunnel-node-b"}
	sample := func() map[string]attack.Usage {
		out := map[string]attack.Usage{}
		for _, z := range names {
			out[z] = attack.Baseline(ztunnels[z], 3, 100*time.Millisecond)
		}
		return out
	}

	base := sample()
	target := netip.AddrPortFrom(echo, 9001)
	ctx, cancel := context.WithTimeout(context.Background(), openWithin)
	defer cancel()
	var mu sync.Mutex
	conns := make([]net.Conn, 0, n)
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	for range heldWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && firstErr.Load() == nil && next.Add(1) <= int64(n) {
				c, err := openHeld(ctx, socks, target)
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	opened := time.Since(start)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if len(conns) == 0 {
		return fmt.Errorf("holding connections through the mesh: none could be opened: %v", errOf(&firstErr))
	}
	// A per-pod limit may stop the opening short: the figures are then for
	// what was held, and say so.
	stopped := ""
	if len(conns) < n {
		stopped = fmt.Sprintf(" (only %d of %d opened within %s: %v)", len(conns), n, openWithin, errOf(&firstErr))
	}
	count := len(conns)
	held := sample()
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	time.Sleep(heldAfter) // the figure is taken this long after the close
	after := sample()

	fmt.Printf("\nztunnel resources, %d connections held %s/client (node-a) → %s/echo (node-b) through the mesh (opened in %s)%s\n",
		count, ns, ns, opened.Round(time.Millisecond), stopped)
	fmt.Printf("  %-22s %-22s %s\n", "fds/threads/RSS", "ztunnel node-a", "ztunnel node-b")
	for _, row := range []struct {
		name string
		u    map[string]attack.Usage
	}{{"baseline", base}, {fmt.Sprintf("%d held", count), held}, {fmt.Sprintf("%s after close", heldAfter), after}} {
		fmt.Printf("  %-22s %-22s %s\n", row.name, row.u[names[0]], row.u[names[1]])
	}
	return nil
}

// openHeld connects to target and makes one 1-byte round trip, so the
// connection is known to go end to end.
func openHeld(ctx context.Context, socks *attack.Sockets, target netip.AddrPort) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := socks.Dial(dctx, target)
	if err != nil {
		return nil, err
	}
	d, _ := dctx.Deadline()
	c.SetDeadline(d)
	b := []byte{'h'}
	if _, err = c.Write(b); err == nil {
		_, err = io.ReadFull(c, b)
	}
	if err == nil && b[0] != 'h' {
		err = errors.New("echo answered another byte")
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("round trip to %s: %w", target, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func errOf(p *atomic.Pointer[error]) error {
	if e := p.Load(); e != nil {
		return *e
	}
	return context.DeadlineExceeded
}
