//lint:file-ignore SA1019 deliberately tests interop with x/net's http2.Transport and http2.Server (the code net/http bundles).

package hbone

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/pkg/testpki"
	"golang.org/x/net/http2"
)

// expectClosedWithoutHTTP2 asserts the server ends the connection without
// ever sending a byte of HTTP/2 (no SETTINGS).
func expectClosedWithoutHTTP2(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server kept the connection open")
	}
	if len(b) > 0 {
		t.Fatalf("server sent %d bytes of application data to a rejected client", len(b))
	}
}

// syncBuffer collects log output across goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestServerRejectsClientCertificates(t *testing.T) {
	logs := &syncBuffer{}
	e := newEnv(t, nil, func(s *ServerConfig, _ *PoolConfig) {
		s.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	otherCA := testpki.NewCA(t, "cluster.local")
	otherTD := testpki.NewCA(t, "other.local")
	noURI := func(c *x509.Certificate) { c.URIs = nil }
	cases := []struct {
		name      string
		cert      *tls.Certificate
		alpn      []string
		serverLog string // what the server logs as the cause
	}{
		{"no client certificate", nil, []string{"h2"}, "didn't provide a certificate"},
		{"certificate from another CA", ptr(otherCA.Leaf(t, "a", "a")), []string{"h2"}, "unknown authority"},
		{"certificate from another trust domain", ptr(otherTD.Leaf(t, "a", "a")), []string{"h2"}, "unknown authority"},
		{"our CA, ID in another trust domain", ptr(e.ca.LeafFor(t, spiffe.ID{TrustDomain: "other.local", Namespace: "a", ServiceAccount: "a"})), []string{"h2"}, ErrTrustDomain.Error()},
		{"expired certificate", ptr(e.ca.Leaf(t, "a", "a", testpki.Expired())), []string{"h2"}, "expired"},
		{"certificate without a SPIFFE ID", ptr(e.ca.Leaf(t, "a", "a", noURI)), []string{"h2"}, "want exactly one URI SAN"},
		{"no ALPN", ptr(e.cliCert), nil, "did not negotiate ALPN"},
		{"ALPN http/1.1 (HTTP/1.1 client)", ptr(e.cliCert), []string{"http/1.1"}, "did not negotiate ALPN"},
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", logs)
		}
	})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := strings.Count(logs.String(), c.serverLog)
			conf := &tls.Config{InsecureSkipVerify: true, NextProtos: c.alpn, MinVersion: tls.VersionTLS13}
			if c.cert != nil {
				conf.Certificates = []tls.Certificate{*c.cert}
			}
			conn, err := tls.Dial("tcp", e.addr.String(), conf)
			if err == nil {
				defer conn.Close()
				expectClosedWithoutHTTP2(t, conn)
			}
			waitFor(t, "server log "+strconv.Quote(c.serverLog), func() bool {
				return strings.Count(logs.String(), c.serverLog) > before
			})
		})
	}
	// Control: the same dial with a good certificate gets the server's SETTINGS.
	conn, err := tls.Dial("tcp", e.addr.String(), &tls.Config{
		InsecureSkipVerify: true, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{e.cliCert},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte(http2.ClientPreface))
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fr := http2.NewFramer(nil, conn)
	if f, err := fr.ReadFrame(); err != nil || f.Header().Type != http2.FrameSettings {
		t.Fatalf("control client: first frame %v, %v; want SETTINGS", f, err)
	}
	// The server still serves good clients.
	s, err := e.pool.Dial(testCtx(t), e.key, e.target, Headers{})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, s, 10)
	s.Close()
}

func ptr[T any](v T) *T { return &v }

func TestServerRejectsPlaintext(t *testing.T) {
	e := newEnv(t, nil)
	for name, bytes := range map[string]string{
		"HTTP/1.1 request":    "CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n",
		"h2c preface":         http2.ClientPreface,
		"garbage":             "\x00\x01\x02\x03\xff\xfe",
		"truncated handshake": "\x16\x03\x01\x00",
	} {
		t.Run(name, func(t *testing.T) {
			c, err := net.Dial("tcp", e.addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte(bytes))
			if name == "truncated handshake" {
				// Only the handshake timeout ends this one; do not wait for it.
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			b, err := io.ReadAll(c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("server kept a plaintext connection open")
			}
			if strings.Contains(string(b), "HTTP/") {
				t.Fatalf("server answered plaintext: %q", b)
			}
		})
	}
	s, err := e.pool.Dial(testCtx(t), e.key, e.target, Headers{})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, s, 10)
	s.Close()
}

func TestServerHandshakeTimeout(t *testing.T) {
	e := newEnv(t, nil, func(s *ServerConfig, _ *PoolConfig) { s.HandshakeTimeout = 100 * time.Millisecond })
	c, err := net.Dial("tcp", e.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("\x16\x03\x01\x00")) // a TLS record header, then silence
	expectClosedWithoutHTTP2(t, c)
}

// xnetTransport is x/net's HTTP/2 client presenting cert.
func xnetTransport(t *testing.T, cert tls.Certificate) *http2.Transport {
	tr := &http2.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true,
		NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13,
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func TestServerRejectsNonConnectAndBadAuthority(t *testing.T) {
	e := newEnv(t, nil)
	tr := xnetTransport(t, e.cliCert)
	for _, c := range []struct {
		method, host string
		status       int
		reason       string
	}{
		{"GET", e.target.String(), 405, "only CONNECT"},
		{"POST", e.target.String(), 405, "only CONNECT"},
		{"CONNECT", "example.com:80", 400, "malformed :authority"},
		{"CONNECT", "10.0.0.1", 400, "malformed :authority"},
		{"CONNECT", "10.0.0.1:0", 400, "port 0"},
		{"CONNECT", "10.9.9.9:80", 404, ErrNotServed.Error()},
	} {
		req, err := http.NewRequest(c.method, "https://"+e.addr.String()+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = c.host
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s %s: %v", c.method, c.host, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status || !strings.Contains(string(body), c.reason) {
			t.Errorf("%s %s: %d %q, want %d containing %q", c.method, c.host, resp.StatusCode, body, c.status, c.reason)
		}
	}
}
