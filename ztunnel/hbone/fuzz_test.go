package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// fuzzSeeds are client byte streams (after the preface) that exercise the
// server's frame handling.
func fuzzSeeds() [][]byte {
	var seeds [][]byte
	frames := func(fn func(fr *http2.Framer, block func(...string) []byte)) []byte {
		var buf, hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		block := func(kv ...string) []byte {
			hb.Reset()
			for i := 0; i+1 < len(kv); i += 2 {
				enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
			}
			return append([]byte(nil), hb.Bytes()...)
		}
		fr := http2.NewFramer(&buf, nil)
		fr.AllowIllegalWrites = true
		fn(fr, block)
		return buf.Bytes()
	}
	connect := []string{":method", "CONNECT", ":authority", "10.0.0.1:80", "forwarded", `for="1.2.3.4"`}
	seeds = append(seeds,
		frames(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
			fr.WriteWindowUpdate(0, 1<<20)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(connect...), EndHeaders: true})
			fr.WriteData(1, false, []byte("hello"))
			fr.WriteData(1, true, nil)
			fr.WritePing(false, [8]byte{1})
		}),
		frames(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteSettings()
			b := block(connect...)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3]})
			fr.WriteContinuation(1, true, b[3:])
			fr.WriteRSTStream(1, http2.ErrCodeCancel)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block(":method", "GET", ":path", "/", ":scheme", "https", ":authority", "x"), EndHeaders: true, EndStream: true})
			fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		}),
		frames(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1})
			fr.WriteData(5, false, []byte("idle"))
		}),
		frames(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteSettings()
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(connect...), EndHeaders: true})
			fr.WriteData(1, false, make([]byte, 17000))
			fr.WriteWindowUpdate(1, 1<<31-1)
			fr.WriteWindowUpdate(1, 1<<31-1)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block("x-trailer", "1"), EndHeaders: true, EndStream: true})
		}),
		frames(func(fr *http2.Framer, block func(...string) []byte) {
			// Rapid reset past MaxConcurrentStreams, a provoked reset, then
			// a SETTINGS flood past its limit.
			fr.WriteSettings()
			for id := uint32(1); id < 40; id += 2 {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block(connect...), EndHeaders: true})
				if id%4 == 1 {
					fr.WriteRSTStream(id, http2.ErrCodeCancel)
				}
			}
			fr.WriteData(3, true, nil)
			fr.WriteData(3, false, []byte("after END_STREAM"))
			for range settingsBurst + 1 {
				fr.WriteSettings()
			}
		}),
		[]byte{0, 0, 0, 4, 0, 0, 0, 0, 0},
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	)
	return seeds
}

// FuzzServerConn feeds arbitrary bytes after a valid client preface to the
// server's HTTP/2 loop (TLS already done, peer idA) and requires that it
// neither panics nor hangs.
func FuzzServerConn(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(runFuzzBody)
}

func runFuzzBody(t *testing.T, data []byte) {
	{
		srv, err := NewServer(ServerConfig{
			TrustDomain:    "cluster.local",
			TrustBundle:    func() *x509.CertPool { return nil },
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil },
			Handler: handlerFuncs{
				authorize: func(_ context.Context, req *Request) (netip.AddrPort, error) { return req.Authority, nil },
				serve: func(ctx context.Context, s *Stream) {
					s.SetDeadline(time.Now().Add(5 * time.Second))
					s.Write([]byte("hi"))
					io.Copy(io.Discard, s)
					s.CloseWrite()
				},
			},
			MaxConcurrentStreams: 4,
		})
		if err != nil {
			t.Fatal(err)
		}
		cli, sc := net.Pipe()
		deadline := time.Now().Add(5 * time.Second)
		cli.SetDeadline(deadline)
		sc.SetDeadline(deadline)
		served := make(chan struct{})
		go func() {
			defer close(served)
			if srv.track(1) {
				defer srv.wg.Done()
				srv.serveH2(sc, nil, idA)
			}
		}()
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			io.Copy(io.Discard, cli)
		}()
		cli.Write(append([]byte(http2.ClientPreface), data...))
		cli.Close()
		closed := make(chan struct{})
		go func() {
			<-served
			srv.Close()
			<-drained
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(20 * time.Second):
			t.Fatal("server connection loop or handlers hung")
		}
	}
}

// FuzzParseRequest checks CONNECT header validation: it never panics, always
// decides, and accepts only a CONNECT to a well-formed ip:port.
func FuzzParseRequest(f *testing.F) {
	f.Add("CONNECT", "10.0.0.1:80", "", "", "", "forwarded", `for="1.2.3.4"`)
	f.Add("CONNECT", "[fd00::1]:15008", "", "", "", "traceparent", "00-x-y-01")
	f.Add("GET", "10.0.0.1:80", "https", "/", "", "baggage", "a=b")
	f.Add("CONNECT", "[fe80::1%eth0]:80", "", "", "", "connection", "close")
	f.Add("CONNECT", "example.com:80", "", "", "websocket", "te", "trailers")
	f.Fuzz(func(t *testing.T, method, authority, scheme, path, protocol, name, value string) {
		req, rej := parseRequest(requestHeaders{
			method: method, authority: authority, scheme: scheme, path: path, protocol: protocol,
			fields: []hpack.HeaderField{{Name: name, Value: value}},
		})
		if (req == nil) == (rej == nil) {
			t.Fatalf("parseRequest returned req=%v rejection=%v", req, rej)
		}
		if rej != nil {
			if rej.status != 400 && rej.status != 405 || rej.reason == "" {
				t.Fatalf("bad rejection %+v", rej)
			}
			return
		}
		ap, err := netip.ParseAddrPort(authority)
		if method != "CONNECT" || scheme != "" || path != "" || protocol != "" || err != nil ||
			ap.Port() == 0 || ap.Addr().Zone() != "" || req.Authority.Port() != ap.Port() || req.Authority.Addr() != ap.Addr().Unmap() {
			t.Fatalf("accepted %q %q (scheme %q path %q protocol %q) as %+v", method, authority, scheme, path, protocol, req)
		}
	})
}
