//lint:file-ignore SA1019 deliberately tests interop with x/net's http2.Transport and http2.Server (the code net/http bundles).

package hbone

import (
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"golang.org/x/net/http2"
)

// TestInteropXNetClient: x/net's http2.Transport tunnels through our server.
func TestInteropXNetClient(t *testing.T) {
	e := newEnv(t, nil)
	tr := xnetTransport(t, e.cliCert)
	for _, n := range []int64{1, 4 << 20} {
		pr, pw := io.Pipe()
		req, err := http.NewRequest(http.MethodConnect, "https://"+e.addr.String(), pr)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = e.target.String()
		req.Header.Set("Forwarded", `for="10.0.0.7"`)
		req.Header.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		sent := make(chan []byte, 1)
		go func() {
			sum, _ := pump(pw, n, 7)
			pw.Close() // END_STREAM: our server half-closes towards the target
			sent <- sum
		}()
		h := sha256.New()
		got, err := io.Copy(h, resp.Body)
		resp.Body.Close()
		if err != nil || got != n || string(h.Sum(nil)) != string(<-sent) {
			t.Fatalf("x/net client echo: %d of %d bytes, %v", got, n, err)
		}
		r := <-e.reqs
		if r.Peer != idA || r.Forwarded != `for="10.0.0.7"` || r.Traceparent == "" {
			t.Fatalf("server saw %+v", r)
		}
	}
}

// xnetServer runs x/net's http2.Server with a CONNECT echo handler, as
// identity id, on loopback.
func xnetServer(t *testing.T, cert tls.Certificate) netip.AddrPort {
	h2s := &http2.Server{}
	conf := &tls.Config{
		Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"},
		ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS13,
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.Flush()
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				rc.Flush()
			}
			if err != nil {
				return // returning ends the response stream (END_STREAM)
			}
		}
	})
	return tcpServer(t, func(c *net.TCPConn) {
		tc := tls.Server(c, conf)
		if tc.Handshake() != nil {
			return
		}
		h2s.ServeConn(tc, &http2.ServeConnOpts{Handler: handler})
	})
}

// TestInteropXNetServer: our pool tunnels through x/net's http2.Server.
func TestInteropXNetServer(t *testing.T) {
	e := newEnv(t, nil)
	addr := xnetServer(t, e.srvCert)
	key := Key{Source: idA, Destination: idB, Addr: addr}
	ctx := testCtx(t)
	done := make(chan struct{}, 3)
	for _, n := range []int64{1, 1 << 20, 16 << 20} {
		go func() {
			defer func() { done <- struct{}{} }()
			s, err := e.pool.Dial(ctx, key, netip.MustParseAddrPort("10.0.0.1:80"), Headers{})
			if err != nil {
				t.Error(err)
				return
			}
			defer s.Close()
			roundTrip(t, s, n)
		}()
	}
	for range 3 {
		<-done
	}
	// And the identity check still applies.
	wrong := key
	wrong.Destination = spiffe.ID{TrustDomain: "cluster.local", Namespace: "b", ServiceAccount: "other"}
	if _, err := e.pool.Dial(ctx, wrong, netip.MustParseAddrPort("10.0.0.1:80"), Headers{}); !errors.Is(err, ErrPeerIdentity) {
		t.Fatalf("Dial with the wrong expected identity: %v", err)
	}
}

// TestPingTimeoutEvicts: a server that stops answering is dropped after
// an unanswered keep-alive PING.
func TestPingTimeoutEvicts(t *testing.T) {
	e := newEnv(t, nil, func(_ *ServerConfig, p *PoolConfig) {
		p.ReadIdleTimeout = 20 * time.Millisecond
		p.PingTimeout = 50 * time.Millisecond
	})
	conf := &tls.Config{
		Certificates: []tls.Certificate{e.srvCert}, NextProtos: []string{"h2"},
		ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS13,
	}
	// A server that sends SETTINGS and then ignores everything.
	addr := tcpServer(t, func(c *net.TCPConn) {
		tc := tls.Server(c, conf)
		if tc.Handshake() != nil {
			return
		}
		fr := http2.NewFramer(tc, tc)
		fr.WriteSettings()
		io.Copy(io.Discard, tc)
	})
	key := Key{Source: idA, Destination: idB, Addr: addr}
	c, err := e.pool.getConn(testCtx(t), key, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatal("connection to an unresponsive server not closed")
	}
	if !errors.Is(c.closeErr, ErrPingTimeout) {
		t.Fatalf("closed with %v, want ErrPingTimeout", c.closeErr)
	}
	waitFor(t, "eviction of the dead connection", func() bool {
		e.pool.mu.Lock()
		defer e.pool.mu.Unlock()
		return len(e.pool.entries) == 0
	})
}
