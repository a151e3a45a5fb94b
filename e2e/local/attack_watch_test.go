package local

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/e2e/attack"
)

// sampler records the peak usage of processes until stopped.
type sampler struct {
	stop  chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	peaks map[string]attack.Usage
}

func startSampler(pids map[string]int, every time.Duration) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{}), peaks: map[string]attack.Usage{}}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			for name, pid := range pids {
				u := attack.SampleUsage(pid)
				s.mu.Lock()
				s.peaks[name] = s.peaks[name].Max(u)
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// finish stops sampling and returns the peaks.
func (s *sampler) finish() map[string]attack.Usage {
	close(s.stop)
	<-s.done
	return s.peaks
}

// call is one bystander call.
type call struct {
	start, end time.Time
	target     string
	err        error
}

// bystander calls services through the mesh from one enrolled pod, one
// call at a time, every bystanderEvery, until stopped: a TCP echo line to
// each target in turn, each call bounded by bystanderTimeout.
type bystander struct {
	sockets *attack.Sockets
	targets []netip.AddrPort
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	calls   []call
}

func startBystander(s *attack.Sockets, targets ...netip.AddrPort) *bystander {
	b := &bystander{sockets: s, targets: targets, stop: make(chan struct{}), done: make(chan struct{})}
	go b.loop()
	return b
}

func (b *bystander) loop() {
	defer close(b.done)
	for seq := 0; ; seq++ {
		target := b.targets[seq%len(b.targets)]
		start := time.Now()
		err := b.once(target, seq)
		b.mu.Lock()
		b.calls = append(b.calls, call{start: start, end: time.Now(), target: target.String(), err: err})
		b.mu.Unlock()
		select {
		case <-b.stop:
			return
		case <-time.After(time.Until(start.Add(bystanderEvery))): // pacing; a slow call is followed at once
		}
	}
}

func (b *bystander) once(target netip.AddrPort, seq int) error {
	ctx, cancel := context.WithTimeout(context.Background(), bystanderTimeout)
	defer cancel()
	c, err := b.sockets.Dial(ctx, target)
	if err != nil {
		return err
	}
	defer c.Close()
	d, _ := ctx.Deadline()
	c.SetDeadline(d)
	line := fmt.Sprintf("bystander-%d", seq)
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the echo of %s: %w", target, err)
	}
	if !strings.Contains(got, "echo="+line) {
		return fmt.Errorf("%s answered %q, want the echo of %q", target, got, line)
	}
	return nil
}

func (b *bystander) close() {
	close(b.stop)
	<-b.done
	b.sockets.Close()
}

// since returns the calls that started at or after t.
func (b *bystander) since(t time.Time) []call {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.calls), func(i int) bool { return !b.calls[i].start.Before(t) })
	return append([]call(nil), b.calls[i:]...)
}

// healthy reports whether the last n calls after t all succeeded.
func (b *bystander) healthy(t time.Time, n int) bool {
	calls := b.since(t)
	if len(calls) < n {
		return false
	}
	for _, c := range calls[len(calls)-n:] {
		if c.err != nil {
			return false
		}
	}
	return true
}

// callStats summarises the calls of a window ending at end: the count, the
// failures, the longest outage (from the start of a failing call to the
// start of the next successful one, or to end) and the first failure.
type callStats struct {
	calls, failures int
	longest         time.Duration
	firstErr        error
}

func statsOf(calls []call, end time.Time) callStats {
	var s callStats
	var outageStart time.Time
	for _, c := range calls {
		if c.start.After(end) {
			break
		}
		s.calls++
		if c.err != nil {
			s.failures++
			if s.firstErr == nil {
				s.firstErr = fmt.Errorf("%s at %s: %w", c.target, c.start.Format("15:04:05.000"), c.err)
			}
			if outageStart.IsZero() {
				outageStart = c.start
			}
			continue
		}
		if !outageStart.IsZero() {
			s.longest = max(s.longest, c.start.Sub(outageStart))
			outageStart = time.Time{}
		}
	}
	if !outageStart.IsZero() {
		s.longest = max(s.longest, end.Sub(outageStart))
	}
	return s
}

func (s callStats) String() string {
	return fmt.Sprintf("%d/%d/%s", s.calls, s.failures, s.longest.Round(10*time.Millisecond))
}
