package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// attacker speaks raw HTTP/2 to a Server over real TLS with a valid mesh
// certificate, as a pod with a mesh identity could.
type attacker struct {
	t      testing.TB
	tc     *tls.Conn
	bw     *bufio.Writer
	fr     *http2.Framer // writes only; the reader has its own
	hbuf   bytes.Buffer
	henc   *hpack.Encoder
	nextID uint32
	rstAt  map[uint32]time.Time // when each stream's RST_STREAM left

	refused  atomic.Int64 // RST_STREAM(REFUSED_STREAM) received
	answered atomic.Int64 // response HEADERS received
	goAway   chan http2.ErrCode
	ended    chan struct{} // the server closed the connection
	readErr  error         // why, once ended
}

func newAttacker(t testing.TB, e *env) *attacker {
	t.Helper()
	tc, err := tls.Dial("tcp", e.addr.String(), &tls.Config{
		Certificates: []tls.Certificate{e.cliCert}, InsecureSkipVerify: true,
		NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	a := &attacker{
		t: t, tc: tc, bw: bufio.NewWriterSize(tc, 64<<10), nextID: 1,
		rstAt: make(map[uint32]time.Time), goAway: make(chan http2.ErrCode, 1), ended: make(chan struct{}),
	}
	a.henc = hpack.NewEncoder(&a.hbuf)
	a.fr = http2.NewFramer(a.bw, nil)
	go a.read()
	t.Cleanup(func() {
		tc.Close()
		<-a.ended
	})
	a.bw.WriteString(http2.ClientPreface)
	a.fr.WriteSettings()
	a.flush()
	return a
}

// read counts what the server sends until it closes the connection.
func (a *attacker) read() {
	defer close(a.ended)
	fr := http2.NewFramer(nil, a.tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			a.readErr = err
			return
		}
		if debugAttacker {
			fmt.Println("attacker got", f)
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			if f.ErrCode == http2.ErrCodeRefusedStream {
				a.refused.Add(1)
			}
		case *http2.MetaHeadersFrame:
			a.answered.Add(1)
		case *http2.GoAwayFrame:
			select {
			case a.goAway <- f.ErrCode:
			default:
			}
		}
	}
}

func (a *attacker) flush() error { return a.bw.Flush() }

// open sends HEADERS for a CONNECT to target carrying its stream ID in
// baggage (the fake dialer keys on it) and returns the ID.
func (a *attacker) open(target netip.AddrPort) (uint32, error) {
	id := a.nextID
	a.nextID += 2
	a.hbuf.Reset()
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: target.String()},
		{Name: "baggage", Value: strconv.Itoa(int(id))},
	} {
		a.henc.WriteField(f)
	}
	return id, a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: a.hbuf.Bytes(), EndHeaders: true})
}

// reset sends RST_STREAM(CANCEL) on id and records when.
func (a *attacker) reset(id uint32) error {
	a.rstAt[id] = time.Now()
	return a.fr.WriteRSTStream(id, http2.ErrCodeCancel)
}

// rapidReset sends HEADERS+RST_STREAM pairs, flushing each pair, until n
// pairs are sent, the server sends GOAWAY or the connection fails.
func (a *attacker) rapidReset(target netip.AddrPort, n int) (sent int) {
	for ; sent < n; sent++ {
		select {
		case <-a.ended:
			return sent
		default:
		}
		id, err := a.open(target)
		if err == nil {
			err = a.reset(id)
		}
		if err == nil {
			err = a.flush()
		}
		if err != nil {
			return sent
		}
	}
	return sent
}

// awaitGoAway waits for a GOAWAY with code and then the connection's end.
func (a *attacker) awaitGoAway(code http2.ErrCode) error {
	select {
	case got := <-a.goAway:
		if got != code {
			return fmt.Errorf("GOAWAY %v, want %v", got, code)
		}
	case <-a.ended:
		select {
		case got := <-a.goAway:
			if got != code {
				return fmt.Errorf("GOAWAY %v, want %v", got, code)
			}
			return nil
		default:
			return fmt.Errorf("connection ended without GOAWAY(%v): %v", code, a.readErr)
		}
	case <-time.After(10 * time.Second):
		return fmt.Errorf("no GOAWAY(%v) within 10s", code)
	}
	select {
	case <-a.ended:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("server kept the connection open after GOAWAY")
	}
}

func (a *attacker) expectGoAway(code http2.ErrCode) {
	a.t.Helper()
	if err := a.awaitGoAway(code); err != nil {
		a.t.Fatal(err)
	}
}

// echoOnce sends n bytes, half-closes and checks the echo; for goroutines
// other than the test's.
func echoOnce(s *Stream, n int) error {
	msg := bytes.Repeat([]byte("e"), n)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Write(msg)
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(s)
	if werr := <-errc; werr != nil {
		return werr
	}
	if err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo returned %d bytes, sent %d", len(got), n)
	}
	return nil
}

func slogText(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

var debugAttacker = false

// fakeTarget is the authority of streams to a fakeDialer.
var fakeTarget = netip.MustParseAddrPort("10.0.0.1:80")

// fakeDialer stands for the dial a handler makes: it blocks until ctx is
// done and records how many calls are in flight and when each ended.
type fakeDialer struct {
	mu                             sync.Mutex
	inFlight, maxInFlight, started int
	cancelled                      int
	endedAt                        map[string]time.Time // by request baggage
}

func newFakeDialer() *fakeDialer { return &fakeDialer{endedAt: make(map[string]time.Time)} }

func (d *fakeDialer) dial(ctx context.Context, key string) error {
	d.mu.Lock()
	d.started++
	d.inFlight++
	d.maxInFlight = max(d.maxInFlight, d.inFlight)
	d.mu.Unlock()
	<-ctx.Done()
	d.mu.Lock()
	d.inFlight--
	d.cancelled++
	d.endedAt[key] = time.Now()
	d.mu.Unlock()
	return ctx.Err()
}

func (d *fakeDialer) snapshot() (inFlight, maxInFlight, started, cancelled int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.inFlight, d.maxInFlight, d.started, d.cancelled
}

// limitRecorder counts OnLimit calls by reason.
type limitRecorder struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *limitRecorder) onLimit(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = make(map[string]int)
	}
	r.n[reason]++
}

func (r *limitRecorder) get(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

func (r *limitRecorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprint(r.n)
}

// blockingHandler dials with d in Authorize or in ServeHBONE.
func blockingHandler(d *fakeDialer, inServe bool) Handler {
	return handlerFuncs{
		authorize: func(ctx context.Context, req *Request) (netip.AddrPort, error) {
			if !inServe {
				return netip.AddrPort{}, d.dial(ctx, req.Baggage)
			}
			return req.Authority, nil
		},
		serve: func(ctx context.Context, s *Stream) {
			if err := d.dial(ctx, s.Request().Baggage); err != nil {
				s.Reject(503, err.Error())
			}
		},
	}
}

// goroutineBaseline returns a check that the goroutine count comes back to
// what it is now (plus slack) within a deadline.
func goroutineBaseline(t *testing.T) func() {
	base := runtime.NumGoroutine()
	return func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= base+2 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Fatalf("%d goroutines 10s after the attack, baseline %d:\n%s", n, base, buf[:runtime.Stack(buf, true)])
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestRapidResetBoundedAndCancelled: streams the attacker resets cancel the
// handler's context at once, handlers in flight never exceed
// MaxConcurrentStreams however fast the attacker resets, and the excess is
// refused with REFUSED_STREAM without starting anything.
func TestRapidResetBoundedAndCancelled(t *testing.T) {
	const maxStreams, pairs = 8, 2000
	for _, inServe := range []bool{false, true} {
		t.Run(map[bool]string{false: "blocked in Authorize", true: "blocked in ServeHBONE"}[inServe], func(t *testing.T) {
			d := newFakeDialer()
			lim := &limitRecorder{}
			e := newEnv(t, blockingHandler(d, inServe), func(s *ServerConfig, _ *PoolConfig) {
				s.MaxConcurrentStreams = maxStreams
				s.StreamOpenRate, s.ResetRate = -1, -1 // the bound alone
				s.OnLimit = lim.onLimit
			})
			target := fakeTarget
			a := newAttacker(t, e)

			// Fill the slots and go past them.
			var held []uint32
			for range maxStreams + 4 {
				id, _ := a.open(target)
				held = append(held, id)
			}
			a.flush()
			waitFor(t, "handlers in flight and refusals", func() bool {
				n, _, _, _ := d.snapshot()
				return n == maxStreams && a.refused.Load() == 4
			})
			if n := lim.get(LimitRefusedStream); n != 4 {
				t.Fatalf("OnLimit(%s) called %d times, want 4", LimitRefusedStream, n)
			}

			// Reset them all, then reset as fast as possible.
			for _, id := range held {
				a.reset(id)
			}
			start := time.Now()
			if sent := a.rapidReset(target, pairs); sent != pairs {
				t.Fatalf("connection ended after %d of %d pairs", sent, pairs)
			}
			sendTime := time.Since(start)
			waitFor(t, "every handler cancelled", func() bool {
				n, _, started, cancelled := d.snapshot()
				return n == 0 && started == cancelled
			})
			_, maxIn, started, _ := d.snapshot()
			refused := int(a.refused.Load())
			t.Logf("%d pairs in %v: %d handlers started, %d streams refused, at most %d in flight",
				pairs, sendTime, started, refused, maxIn)
			if maxIn > maxStreams {
				t.Errorf("%d handlers in flight, limit %d", maxIn, maxStreams)
			}
			opened := maxStreams + 4 + pairs
			waitFor(t, "an answer to every stream", func() bool {
				_, _, started, _ = d.snapshot()
				return started+int(a.refused.Load()) == opened
			})
			refused = int(a.refused.Load())
			// Each reset reached its handler promptly.
			var worst time.Duration
			d.mu.Lock()
			for id, at := range a.rstAt {
				if end, ok := d.endedAt[strconv.Itoa(int(id))]; ok {
					worst = max(worst, end.Sub(at))
				}
			}
			d.mu.Unlock()
			// The delay includes the server's backlog of frames ahead of the
			// RST_STREAM; a loaded 2-core machine under -race shows < 1s.
			t.Logf("worst delay from RST_STREAM sent to handler ctx done: %v", worst)
			if worst > 5*time.Second {
				t.Errorf("a handler saw its stream's reset after %v", worst)
			}
			if n := lim.get(LimitRefusedStream); n != refused {
				t.Errorf("OnLimit(%s) called %d times for %d refused streams", LimitRefusedStream, n, refused)
			}
		})
	}
}

// TestHandlerContextCancelled: the context of a handler blocked in its dial
// ends with every way a stream can end under it.
func TestHandlerContextCancelled(t *testing.T) {
	target := fakeTarget
	cases := []struct {
		name string
		end  func(e *env, a *attacker, id uint32)
	}{
		{"peer resets the stream", func(_ *env, a *attacker, id uint32) { a.reset(id); a.flush() }},
		{"peer closes the connection", func(_ *env, a *attacker, _ uint32) { a.tc.Close() }},
		{"peer half-closes TCP", func(_ *env, a *attacker, _ uint32) { a.tc.CloseWrite() }},
		{"server GOAWAY on a protocol error", func(_ *env, a *attacker, _ uint32) {
			a.fr.WriteData(1001, false, []byte("idle stream")) // PROTOCOL_ERROR
			a.flush()
		}},
		{"server GOAWAY on a limit", func(_ *env, a *attacker, _ uint32) {
			for range settingsBurst + 1 {
				a.fr.WriteSettings()
			}
			a.flush()
		}},
		{"server closed", func(e *env, _ *attacker, _ uint32) { go e.srv.Close() }},
	}
	for _, inServe := range []bool{false, true} {
		for _, c := range cases {
			name := map[bool]string{false: "Authorize", true: "ServeHBONE"}[inServe] + "/" + c.name
			t.Run(name, func(t *testing.T) {
				d := newFakeDialer()
				e := newEnv(t, blockingHandler(d, inServe))
				a := newAttacker(t, e)
				id, _ := a.open(target)
				a.flush()
				waitFor(t, "the handler's dial", func() bool { n, _, _, _ := d.snapshot(); return n == 1 })
				at := time.Now()
				c.end(e, a, id)
				waitFor(t, "the handler's context to end", func() bool { n, _, _, _ := d.snapshot(); return n == 0 })
				t.Logf("cancelled after %v", time.Since(at))
			})
		}
	}
}

// TestResetFloodGoAway: a sustained HEADERS+RST_STREAM flood on several
// connections is cut off with GOAWAY(ENHANCE_YOUR_CALM) under the default
// limits, while a legitimate client of the same server succeeds
// throughout, and nothing stays behind.
func TestResetFloodGoAway(t *testing.T) {
	lim := &limitRecorder{}
	logs := &syncBuffer{}
	e := newEnv(t, nil, func(s *ServerConfig, _ *PoolConfig) {
		s.OnLimit = lim.onLimit
		s.Logger = slogText(logs)
	})
	warm, err := e.pool.Dial(testCtx(t), e.key, e.target, Headers{})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, warm, 10)
	warm.Close()
	checkGoroutines := goroutineBaseline(t)

	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var bystander, attacks sync.WaitGroup
	stopBystander := sync.OnceFunc(func() {
		close(stop)
		bystander.Wait()
	})
	defer stopBystander()
	ctx := testCtx(t)
	bystander.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			s, err := e.pool.Dial(ctx, e.key, e.target, Headers{})
			if err == nil {
				err = echoOnce(s, 1024)
				s.Close()
			}
			if err != nil {
				failed.Add(1)
				t.Errorf("bystander: %v", err)
				continue
			}
			ok.Add(1)
		}
	})
	const conns = 4
	var attackers []*attacker
	for range conns {
		attackers = append(attackers, newAttacker(t, e))
	}
	start := time.Now()
	for i, a := range attackers {
		attacks.Go(func() {
			sent := a.rapidReset(e.target, 1_000_000)
			if err := a.awaitGoAway(http2.ErrCodeEnhanceYourCalm); err != nil {
				t.Errorf("attacker %d: %v", i, err)
			}
			t.Logf("attacker %d: GOAWAY after %d pairs, %v", i, sent, time.Since(start))
		})
	}
	waitFor(t, "every attacker cut off", func() bool { return lim.get(LimitResetRate) == conns })
	// The bystander keeps going a little after the attack.
	before := ok.Load()
	waitFor(t, "bystander round trips after the attack", func() bool { return ok.Load() >= before+20 })
	stopBystander()
	attacks.Wait()
	t.Logf("bystander: %d round trips, %d failed; limits: %v", ok.Load(), failed.Load(), lim)
	if failed.Load() != 0 {
		t.Fatalf("%d bystander calls failed", failed.Load())
	}
	if n := lim.get(LimitStreamRate); n != 0 {
		t.Errorf("OnLimit(%s) called %d times; the reset limit should trip first", LimitStreamRate, n)
	}
	if got := bytes.Count([]byte(logs.String()), []byte("ENHANCE_YOUR_CALM")); got != conns {
		t.Errorf("%d GOAWAY log lines, want %d:\n%s", got, conns, logs)
	}
	if !bytes.Contains([]byte(logs.String()), []byte("remote=127.0.0.1:")) || !bytes.Contains([]byte(logs.String()), []byte("peer=spiffe://cluster.local/ns/a/sa/a")) {
		t.Errorf("GOAWAY log lacks the peer and remote address:\n%s", logs)
	}
	e.pool.Close()
	checkGoroutines()
}

// TestStreamRateCountsRefusedStreams: openings count whether or not the
// stream was refused, and past the rate the connection gets GOAWAY.
func TestStreamRateCountsRefusedStreams(t *testing.T) {
	lim := &limitRecorder{}
	d := newFakeDialer()
	e := newEnv(t, blockingHandler(d, false), func(s *ServerConfig, _ *PoolConfig) {
		s.MaxConcurrentStreams = 1
		s.StreamOpenRate, s.StreamOpenBurst = 0.01, 50
		s.OnLimit = lim.onLimit
	})
	a := newAttacker(t, e)
	for range 51 { // no resets: one handler, 49 refused, then the limit
		a.open(fakeTarget)
	}
	a.flush()
	a.expectGoAway(http2.ErrCodeEnhanceYourCalm)
	if got := lim.get(LimitStreamRate); got != 1 {
		t.Fatalf("OnLimit(%s) = %d, want 1 (%v)", LimitStreamRate, got, lim)
	}
	if got := lim.get(LimitRefusedStream); got != 49 {
		_, _, started, _ := d.snapshot()
		t.Fatalf("OnLimit(%s) = %d, want 49 (%v, %d handlers, %d refusals seen)", LimitRefusedStream, got, lim, started, a.refused.Load())
	}
	waitFor(t, "the handler cancelled by the close", func() bool {
		n, _, _, c := d.snapshot()
		return n == 0 && c == 1
	})
}

// TestProvokedResetsCount: stream errors the peer provokes (here DATA after
// END_STREAM) count like its own resets ("MadeYouReset").
func TestProvokedResetsCount(t *testing.T) {
	lim := &limitRecorder{}
	d := newFakeDialer()
	e := newEnv(t, blockingHandler(d, true), func(s *ServerConfig, _ *PoolConfig) {
		s.ResetRate, s.ResetBurst = 0.01, 10
		s.OnLimit = lim.onLimit
	})
	a := newAttacker(t, e)
	for range 11 {
		id, _ := a.open(fakeTarget)
		a.fr.WriteData(id, true, nil)
		a.fr.WriteData(id, false, []byte("after END_STREAM"))
	}
	a.flush()
	a.expectGoAway(http2.ErrCodeEnhanceYourCalm)
	if got := lim.get(LimitResetRate); got != 1 {
		t.Fatalf("OnLimit(%s) = %d, want 1 (%v)", LimitResetRate, got, lim)
	}
}

// TestSettingsFloodGoAway: a SETTINGS flood is cut off.
func TestSettingsFloodGoAway(t *testing.T) {
	lim := &limitRecorder{}
	e := newEnv(t, nil, func(s *ServerConfig, _ *PoolConfig) { s.OnLimit = lim.onLimit })
	a := newAttacker(t, e)
	for range 10 * settingsBurst {
		if a.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20}) != nil {
			break
		}
	}
	a.flush()
	a.expectGoAway(http2.ErrCodeEnhanceYourCalm)
	if got := lim.get(LimitSettingsRate); got != 1 {
		t.Fatalf("OnLimit(%s) = %d, want 1 (%v)", LimitSettingsRate, got, lim)
	}
}

// TestLegitimateTrafficWithinLimits: a busy legitimate client under the
// default limits: thousands of sequential streams and hundreds of resets
// after the answer, all on one connection, trip nothing.
func TestLegitimateTrafficWithinLimits(t *testing.T) {
	lim := &limitRecorder{}
	e := newEnv(t, nil, func(s *ServerConfig, _ *PoolConfig) { s.OnLimit = lim.onLimit })
	ctx := testCtx(t)
	const streams, resets = 2000, 600
	start := time.Now()
	for i := range streams {
		s, err := e.pool.Dial(ctx, e.key, e.target, Headers{})
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		roundTrip(t, s, 64)
		s.Close()
	}
	t.Logf("%d sequential streams in %v", streams, time.Since(start))
	start = time.Now()
	for i := range resets { // the app aborts a live connection
		s, err := e.pool.Dial(ctx, e.key, e.target, Headers{})
		if err != nil {
			t.Fatalf("reset %d: %v", i, err)
		}
		s.Write([]byte("x"))
		s.Close() // RST_STREAM(CANCEL) after the 200
		time.Sleep(time.Millisecond)
	}
	t.Logf("%d resets after the answer in %v", resets, time.Since(start))
	s, err := e.pool.Dial(ctx, e.key, e.target, Headers{})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, s, 64)
	s.Close()
	if lim.String() != "map[]" {
		t.Fatalf("limits tripped: %v", lim)
	}
	if n := e.ln.accepts(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}

// TestPoolRetriesRefusedStream: a server whose handlers are all still in
// flight (they outlive streams the client closed) refuses the next stream;
// the pool retries it on a new connection.
func TestPoolRetriesRefusedStream(t *testing.T) {
	lim := &limitRecorder{}
	release := make(chan struct{})
	target := echoServer(t)
	e := newEnv(t, handlerFuncs{
		authorize: func(_ context.Context, req *Request) (netip.AddrPort, error) { return target, nil },
		serve: func(ctx context.Context, s *Stream) {
			if s.Request().Baggage == "hold" {
				s.Accept()
				<-release // a handler that ignores ctx
				return
			}
			DialAndRelay(ctx, nil, s, target)
		},
	}, func(s *ServerConfig, _ *PoolConfig) {
		s.MaxConcurrentStreams = 2
		s.OnLimit = lim.onLimit
	})
	t.Cleanup(func() { close(release) })
	ctx := testCtx(t)
	for range 2 {
		s, err := e.pool.Dial(ctx, e.key, target, Headers{Baggage: "hold"})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	s, err := e.pool.Dial(ctx, e.key, target, Headers{})
	if err != nil {
		t.Fatalf("Dial after a refusal: %v", err)
	}
	roundTrip(t, s, 1000)
	s.Close()
	if n := lim.get(LimitRefusedStream); n != 1 {
		t.Fatalf("OnLimit(%s) = %d, want 1", LimitRefusedStream, n)
	}
	if n := e.ln.accepts(); n != 2 {
		t.Fatalf("%d connections, want 2 (the retry on a new one)", n)
	}
}

// TestPoolEvictsOnEnhanceYourCalm: a connection the server cut off with
// GOAWAY(ENHANCE_YOUR_CALM) leaves the pool; the next Dial uses a new one.
func TestPoolEvictsOnEnhanceYourCalm(t *testing.T) {
	lim := &limitRecorder{}
	e := newEnv(t, nil, func(s *ServerConfig, _ *PoolConfig) {
		s.ResetRate, s.ResetBurst = 0.01, 1 // four resets after the answer
		s.OnLimit = lim.onLimit
	})
	ctx := testCtx(t)
	var first *conn
	for i := 0; lim.get(LimitResetRate) == 0; i++ {
		if i == 10 {
			t.Fatal("reset limit not reached")
		}
		s, err := e.pool.Dial(ctx, e.key, e.target, Headers{})
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = s.c
		}
		s.Write([]byte("x"))
		s.Close()
		if i >= 4 {
			waitFor(t, "the limit", func() bool { return lim.get(LimitResetRate) == 1 })
		}
	}
	select {
	case <-first.done:
	case <-time.After(5 * time.Second):
		t.Fatal("client connection not closed after GOAWAY")
	}
	if !errors.Is(first.closeErr, ErrGoAway) && !errors.Is(first.closeErr, ErrConnClosed) {
		t.Fatalf("closed with %v", first.closeErr)
	}
	s, err := e.pool.Dial(ctx, e.key, e.target, Headers{})
	if err != nil {
		t.Fatal(err)
	}
	if s.c == first {
		t.Fatal("Dial reused the connection cut off with ENHANCE_YOUR_CALM")
	}
	roundTrip(t, s, 100)
	s.Close()
}
