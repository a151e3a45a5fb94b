package meshcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// How ExpectDenied paces and bounds its calls.
const (
	// LastingCalls calls after the first refusal, spread over LastingOver,
	// must all be refused the same way.
	LastingCalls = 5
	LastingOver  = 1500 * time.Millisecond
	// PollTimeout bounds each call while waiting for the first refusal;
	// CallTimeout each of the lasting calls (generous: a refusal is fast,
	// and a loaded machine must not turn a slow refusal into a failure).
	PollTimeout = 500 * time.Millisecond
	CallTimeout = 3 * time.Second
	// CountWithin bounds how long the DENY counter may take to account for
	// the refused calls.
	CountWithin = 10 * time.Second
	pollEvery   = 10 * time.Millisecond
	readTimeout = 5 * time.Second // one read of the counter
)

// countWithin is CountWithin; tests of this package shorten it.
var countWithin = CountWithin

// Cause is how a call ended.
type Cause string

// Causes. Only CauseReset is how ztunnel refuses a connection: it accepts
// the captured (or HBONE) connection, decides, and closes it with a reset.
const (
	CauseAnswered Cause = "answered"
	CauseReset    Cause = "reset"              // ECONNRESET, or EPIPE writing after the reset
	CauseClosed   Cause = "closed"             // EOF before an answer: an orderly close
	CauseRefused  Cause = "connection refused" // nothing listened
	CauseTimeout  Cause = "timeout"
	CauseOther    Cause = "other error"
)

// Classify returns how a call that returned err ended (nil: answered).
func Classify(err error) Cause {
	var ne net.Error
	switch {
	case err == nil:
		return CauseAnswered
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return CauseReset
	case errors.Is(err, syscall.ECONNREFUSED):
		return CauseRefused
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return CauseTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return CauseClosed
	}
	return CauseOther
}

// DialFunc dials like net.Dialer.DialContext.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// ResetWatch remembers the first reset that the connections of one call
// saw. net/http can report a reset as a bare EOF: when the reset's error
// goes to its write, the read after it finds the connection closed and
// the read's EOF is what the call returns. Use one ResetWatch per call.
type ResetWatch struct {
	mu    sync.Mutex
	reset error
}

// Dial wraps dial so that the connections it makes report to w.
func (w *ResetWatch) Dial(dial DialFunc) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &watchedConn{Conn: c, w: w}, nil
	}
}

// Err returns err, joined with the first reset a connection saw (nil
// stays nil), for Classify. A nil w returns err.
func (w *ResetWatch) Err(err error) error {
	if err == nil || w == nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.reset != nil {
		return errors.Join(err, w.reset)
	}
	return err
}

func (w *ResetWatch) see(err error) {
	if err == nil || Classify(err) != CauseReset {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.reset == nil {
		w.reset = err
	}
}

type watchedConn struct {
	net.Conn
	w *ResetWatch
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.w.see(err)
	return n, err
}

func (c *watchedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.w.see(err)
	return n, err
}

func describe(err error) string {
	if err == nil {
		return string(CauseAnswered)
	}
	return fmt.Sprintf("%s (%v)", Classify(err), err)
}

// Denial describes one refusal check.
type Denial struct {
	// What names the call in failures ("GET http://… from ns/pod").
	What string
	// Call makes one call on a new connection and returns nil when it was
	// answered; it must give up when ctx ends.
	Call func(ctx context.Context) error
	// Denials returns the ztunnel's count of connections it refused by
	// policy for this source and destination (DenyCount with the pair's
	// labels, from the ztunnel that decides).
	Denials func(ctx context.Context) (float64, error)
	// Start is when the change that must refuse the call was made; the
	// first refusal must come within Within of it.
	Start  time.Time
	Within time.Duration
}

// Result is what ExpectDenied measured.
type Result struct {
	First   time.Duration // from Start to the first refused call's end
	Refused int           // calls refused (the first and the lasting ones)
	Counted float64       // how much the DENY counter rose meanwhile
}

// ExpectDenied fails t unless the call is refused by ztunnel within
// d.Within of d.Start, stays refused for LastingCalls more calls over
// LastingOver, and the ztunnel counted at least every refused call as
// denied. Calls that time out or fail otherwise while waiting for the
// first refusal do not count as refused; after it, any of them fails t.
// Call it from the test's goroutine.
func ExpectDenied(t testing.TB, d Denial) Result {
	t.Helper()
	base, err := readCount(d.Denials)
	if err != nil {
		t.Fatalf("%s: reading the DENY counter before the check: %v", d.What, err)
	}
	deadline := d.Start.Add(d.Within)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		err := callOnce(d.Call, PollTimeout)
		if Classify(err) == CauseReset {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reset by ztunnel within %v of the change (last call %v after it: %s)",
				d.What, d.Within, time.Since(d.Start).Round(time.Millisecond), describe(err))
		}
		<-tick.C
	}
	res := Result{First: time.Since(d.Start), Refused: 1}
	first := time.Now()
	for i := 1; i <= LastingCalls; i++ {
		// The pause spreads the calls over LastingOver: it measures how
		// long the refusal lasts, it does not wait for readiness.
		time.Sleep(LastingOver / LastingCalls)
		if err := callOnce(d.Call, CallTimeout); Classify(err) != CauseReset {
			t.Fatalf("%s: reset by ztunnel, then call %d of %d, %v later, %s: the refusal does not last",
				d.What, i, LastingCalls, time.Since(first).Round(time.Millisecond), describe(err))
		}
		res.Refused++
	}
	want := base + float64(res.Refused)
	got, deadline := base, time.Now().Add(countWithin)
	for {
		n, err := readCount(d.Denials)
		if err == nil {
			got = n
		}
		if err == nil && got >= want {
			break
		}
		if time.Now().After(deadline) {
			why := ""
			if err != nil {
				why = fmt.Sprintf(" (last read: %v)", err)
			}
			t.Fatalf("%s: %d calls reset, but ztunnel's DENY counter went %v -> %v within %v (want >= %v)%s: the resets are not its policy refusals",
				d.What, res.Refused, base, got, countWithin, want, why)
		}
		<-tick.C
	}
	res.Counted = got - base
	return res
}

func callOnce(call func(context.Context) error, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return call(ctx)
}

func readCount(count func(context.Context) (float64, error)) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	return count(ctx)
}

// DenyCount is ztunnel's count, in its Prometheus text, of connections it
// refused by policy whose labels include want: those refused when opened
// (istio_tcp_connections_opened_total with response_flags="DENY") and
// those open when a policy change came that closed them
// (ambit_ztunnel_revoked_connections_total): a call made just as the
// policy arrives may end either way. It is what Denial.Denials returns.
func DenyCount(text string, want map[string]string) float64 {
	labels := map[string]string{"response_flags": "DENY"}
	for k, v := range want {
		labels[k] = v
	}
	return MetricSum(text, "istio_tcp_connections_opened_total", labels) +
		MetricSum(text, "ambit_ztunnel_revoked_connections_total", want)
}

// MetricSum adds the values of the samples of a metric, in Prometheus
// text, whose labels include every label of want.
func MetricSum(text, name string, want map[string]string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		end := strings.LastIndex(line, "} ")
		if end < 0 {
			continue
		}
		labels := "," + line[len(name)+1:end] + ","
		match := true
		for k, v := range want {
			match = match && strings.Contains(labels, ","+k+"=\""+v+"\",")
		}
		if !match {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(line[end+2:]), 64); err == nil {
			sum += v
		}
	}
	return sum
}
