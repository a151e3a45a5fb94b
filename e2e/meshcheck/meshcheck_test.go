package meshcheck

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// serve accepts on loopback and hands each connection, after reading its
// first line, to end.
func serve(t *testing.T, end func(*net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_, _ = bufio.NewReader(c).ReadString('\n')
				end(c.(*net.TCPConn))
			}()
		}
	}()
	return ln.Addr().String()
}

// lineCall sends a line and waits for one back.
func lineCall(addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if dl, ok := ctx.Deadline(); ok {
			_ = c.SetDeadline(dl)
		}
		if _, err := fmt.Fprintln(c, "hello"); err != nil {
			return err
		}
		_, err = bufio.NewReader(c).ReadString('\n')
		return err
	}
}

func TestClassifyRealSockets(t *testing.T) {
	reset := serve(t, func(c *net.TCPConn) { _ = c.SetLinger(0); c.Close() })
	closed := serve(t, func(c *net.TCPConn) { c.Close() })
	answered := serve(t, func(c *net.TCPConn) { fmt.Fprintln(c, "hi"); c.Close() })
	silent := serve(t, func(c *net.TCPConn) { time.Sleep(time.Second); c.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close()
	for _, c := range []struct {
		addr string
		want Cause
	}{
		{reset, CauseReset}, {closed, CauseClosed}, {answered, CauseAnswered},
		{silent, CauseTimeout}, {refused, CauseRefused},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := lineCall(c.addr)(ctx)
		cancel()
		if got := Classify(err); got != c.want {
			t.Errorf("%s: %v classified %q, want %q", c.want, err, got, c.want)
		}
	}
	if got := Classify(fmt.Errorf("wrapped: %w", &net.OpError{Op: "write", Err: os.NewSyscallError("write", syscall.EPIPE)})); got != CauseReset {
		t.Errorf("EPIPE classified %q, want %q", got, CauseReset)
	}
}

// fakeT records the first Fatalf and ends the goroutine, as testing.T does.
type fakeT struct {
	testing.TB
	fatal string
}

func (f *fakeT) Helper() {}

func (f *fakeT) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func expect(d Denial) string {
	f := &fakeT{}
	done := make(chan struct{})
	go func() { defer close(done); ExpectDenied(f, d) }()
	<-done
	return f.fatal
}

var errReset = &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}

// fakeMesh answers its first allowed calls, then resets (counting each
// reset when counting); calls listed in override, or all with always, end
// as given.
type fakeMesh struct {
	calls    atomic.Int32
	denied   atomic.Int32
	allowed  int32
	counting bool
	override map[int32]error
	always   error // when set, every call not in override ends so
}

func (m *fakeMesh) call(ctx context.Context) error {
	n := m.calls.Add(1)
	if err, ok := m.override[n]; ok {
		return err
	}
	if m.always != nil {
		return m.always
	}
	if n <= m.allowed {
		return nil
	}
	if m.counting {
		m.denied.Add(1)
	}
	return fmt.Errorf("GET: %w", errReset)
}

func (m *fakeMesh) count(context.Context) (float64, error) { return float64(m.denied.Load()), nil }

func TestExpectDenied(t *testing.T) {
	countWithin = 300 * time.Millisecond
	timeout := fmt.Errorf("GET: %w", context.DeadlineExceeded)
	for _, c := range []struct {
		name string
		mesh *fakeMesh
		want string // in the failure; "" passes
	}{
		{"refused, lasting and counted", &fakeMesh{allowed: 3, counting: true}, ""},
		{"timeouts before the refusal are not refusals", &fakeMesh{allowed: 1, counting: true, override: map[int32]error{2: timeout, 3: timeout}}, ""},
		{"only timeouts", &fakeMesh{always: timeout}, "timeout (GET: context deadline exceeded)"},
		{"allowed throughout", &fakeMesh{allowed: 1 << 30}, "last call"},
		{"reset but not counted", &fakeMesh{}, "not its policy refusals"},
		{"answered again", &fakeMesh{counting: true, override: map[int32]error{4: nil}}, "call 3 of 5"},
		{"timeout after the refusal", &fakeMesh{counting: true, override: map[int32]error{2: timeout}}, "call 1 of 5"},
		{"orderly close after the refusal", &fakeMesh{counting: true, override: map[int32]error{6: fmt.Errorf("read: %w", io.EOF)}}, "call 5 of 5"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			got := expect(Denial{What: "fake", Call: c.mesh.call, Denials: c.mesh.count, Start: start, Within: 200 * time.Millisecond})
			if c.want == "" && got != "" {
				t.Fatalf("failed: %s", got)
			}
			if c.want != "" && !strings.Contains(got, c.want) {
				t.Fatalf("failure %q, want one naming %q", got, c.want)
			}
			if got != "" {
				t.Logf("fails as it should: %s", got)
			}
		})
	}
}

func TestMetricSum(t *testing.T) {
	text := `# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="destination",source_principal="spiffe://cluster.local/ns/demo/sa/client",destination_workload="server-b",response_flags="DENY"} 4
istio_tcp_connections_opened_total{reporter="destination",source_principal="spiffe://cluster.local/ns/demo/sa/client",destination_workload="server-b2",response_flags="DENY"} 7
istio_tcp_connections_opened_total{reporter="source",source_principal="spiffe://cluster.local/ns/demo/sa/client",destination_workload="server-b",response_flags="DENY"} 5
istio_tcp_connections_opened_total{reporter="destination",source_principal="spiffe://cluster.local/ns/demo/sa/client",destination_workload="server-b",response_flags="-"} 9
istio_tcp_connections_closed_total{reporter="destination",source_principal="spiffe://cluster.local/ns/demo/sa/client",destination_workload="server-b",response_flags="DENY"} 100
ambit_ztunnel_revoked_connections_total{reporter="destination",source_principal="spiffe://cluster.local/ns/demo/sa/client",destination_workload="server-b",response_flags="-"} 2
ambit_ztunnel_revoked_connections_total{reporter="destination",source_principal="spiffe://cluster.local/ns/demo/sa/client",destination_workload="server-b2",response_flags="-"} 30
`
	want := map[string]string{"reporter": "destination", "destination_workload": "server-b", "response_flags": "DENY"}
	if got := MetricSum(text, "istio_tcp_connections_opened_total", want); got != 4 {
		t.Errorf("MetricSum = %v, want 4 (server-b2, the source reporter, other flags and other metrics excluded)", got)
	}
	if got := MetricSum(text, "istio_tcp_connections_opened_total", map[string]string{"response_flags": "DENY"}); got != 16 {
		t.Errorf("MetricSum over DENY = %v, want 16", got)
	}
	if got := DenyCount(text, map[string]string{"reporter": "destination", "destination_workload": "server-b"}); got != 6 {
		t.Errorf("DenyCount = %v, want 6 (4 refused when opened, 2 closed by a policy change)", got)
	}
}

// scriptedConn fails its writes with writeErr and, once written to, reads
// EOF: a socket whose reset error went to the write (the kernel reports a
// reset once) or, with no writeErr, one the peer closed in order.
type scriptedConn struct {
	writeErr error
	once     sync.Once
	wrote    chan struct{}
}

func (c *scriptedConn) Read([]byte) (int, error) {
	<-c.wrote
	return 0, io.EOF
}

func (c *scriptedConn) Write(p []byte) (int, error) {
	defer c.once.Do(func() { close(c.wrote) })
	if c.writeErr != nil {
		return 0, c.writeErr
	}
	return len(p), nil
}
func (c *scriptedConn) Close() error                     { return nil }
func (c *scriptedConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptedConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptedConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptedConn) SetWriteDeadline(time.Time) error { return nil }

func TestResetWatchSeesWhatHTTPHides(t *testing.T) {
	for _, c := range []struct {
		name      string
		writeErr  error
		wantReset bool
	}{
		{"reset consumed by the write", &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.ECONNRESET)}, true},
		// net/http says EOF or "server closed idle connection".
		{"orderly close", nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var w ResetWatch
			dial := w.Dial(func(context.Context, string, string) (net.Conn, error) {
				return &scriptedConn{writeErr: c.writeErr, wrote: make(chan struct{})}, nil
			})
			client := &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
			_, err := client.Get("http://192.0.2.1/")
			t.Logf("net/http returned %v (alone: %s)", err, Classify(err))
			if got := Classify(w.Err(err)); (got == CauseReset) != c.wantReset {
				t.Errorf("GET: %v; with the watch classified %q, want reset: %v", err, got, c.wantReset)
			}
		})
	}
	var nilWatch *ResetWatch
	if err := nilWatch.Err(io.EOF); err != io.EOF {
		t.Errorf("nil ResetWatch changed the error: %v", err)
	}
}
