package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// seen is a frame the raw test client received, copied out of the framer.
type seen struct {
	typ    http2.FrameType
	stream uint32
	code   http2.ErrCode // RST_STREAM, GOAWAY
	ack    bool
	data   [8]byte // PING
	status string  // HEADERS
}

// rawClient speaks HTTP/2 by hand to a server conn loop over net.Pipe
// (TLS done, peer idA).
type rawClient struct {
	fr     *http2.Framer
	frames chan seen
	hbuf   bytes.Buffer
	henc   *hpack.Encoder
}

func newRawClient(t *testing.T, maxStreams uint32) *rawClient {
	srv, err := NewServer(ServerConfig{
		TrustDomain:    "cluster.local",
		TrustBundle:    func() *x509.CertPool { return nil },
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil },
		Handler: handlerFuncs{
			authorize: func(_ context.Context, req *Request) (netip.AddrPort, error) { return req.Authority, nil },
			serve: func(ctx context.Context, s *Stream) {
				s.Accept()
				io.Copy(io.Discard, s)
			},
		},
		MaxConcurrentStreams: maxStreams,
	})
	if err != nil {
		t.Fatal(err)
	}
	cli, sc := net.Pipe()
	cli.SetDeadline(time.Now().Add(10 * time.Second))
	srv.track(1)
	go func() {
		defer srv.wg.Done()
		srv.serveH2(sc, nil, idA)
	}()
	rc := &rawClient{frames: make(chan seen, 100)}
	rc.henc = hpack.NewEncoder(&rc.hbuf)
	rc.fr = http2.NewFramer(cli, cli)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.fr.AllowIllegalWrites = true
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(rc.frames)
		for {
			f, err := rc.fr.ReadFrame()
			if err != nil {
				return
			}
			s := seen{typ: f.Header().Type, stream: f.Header().StreamID}
			switch f := f.(type) {
			case *http2.RSTStreamFrame:
				s.code = f.ErrCode
			case *http2.GoAwayFrame:
				s.code = f.ErrCode
			case *http2.PingFrame:
				s.ack, s.data = f.IsAck(), f.Data
			case *http2.SettingsFrame:
				s.ack = f.IsAck()
			case *http2.MetaHeadersFrame:
				s.status = f.PseudoValue("status")
			}
			rc.frames <- s
		}
	}()
	t.Cleanup(func() {
		cli.Close()
		srv.Close()
		<-readDone
	})
	if _, err := cli.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	rc.fr.WriteSettings()
	return rc
}

func (rc *rawClient) headers(id uint32, end bool, kv ...string) {
	rc.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		rc.henc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.hbuf.Bytes(), EndHeaders: true, EndStream: end})
}

// expect waits for a frame matching want's non-zero fields.
func (rc *rawClient) expect(t *testing.T, want seen) {
	t.Helper()
	for f := range rc.frames {
		if f.typ == want.typ && (want.stream == 0 || f.stream == want.stream) &&
			(want.code == 0 || f.code == want.code) && (want.status == "" || f.status == want.status) &&
			(!want.ack || f.ack) && (want.data == [8]byte{} || f.data == want.data) {
			return
		}
	}
	t.Fatalf("connection ended without %+v", want)
}

func TestProtocol(t *testing.T) {
	connect := []string{":method", "CONNECT", ":authority", "10.0.0.1:80"}
	cases := []struct {
		name string
		max  uint32
		send func(rc *rawClient)
		want seen
	}{
		{"SETTINGS acked", 0, func(rc *rawClient) {}, seen{typ: http2.FrameSettings, ack: true}},
		{"PING answered", 0, func(rc *rawClient) { rc.fr.WritePing(false, [8]byte{7, 7}) },
			seen{typ: http2.FramePing, ack: true, data: [8]byte{7, 7}}},
		{"CONNECT accepted", 0, func(rc *rawClient) { rc.headers(1, false, connect...) },
			seen{typ: http2.FrameHeaders, stream: 1, status: "200"}},
		{"DATA on idle stream", 0, func(rc *rawClient) { rc.fr.WriteData(5, false, []byte("x")) },
			seen{typ: http2.FrameGoAway, code: http2.ErrCodeProtocol}},
		{"even stream ID", 0, func(rc *rawClient) { rc.headers(2, false, connect...) },
			seen{typ: http2.FrameGoAway, code: http2.ErrCodeProtocol}},
		{"connection window overflow", 0, func(rc *rawClient) {
			rc.fr.WriteWindowUpdate(0, 1<<31-1)
			rc.fr.WriteWindowUpdate(0, 1<<31-1)
		}, seen{typ: http2.FrameGoAway, code: http2.ErrCodeFlowControl}},
		{"stream window overflow", 0, func(rc *rawClient) {
			rc.headers(1, false, connect...)
			rc.fr.WriteWindowUpdate(1, 1<<31-1)
		}, seen{typ: http2.FrameRSTStream, stream: 1, code: http2.ErrCodeFlowControl}},
		{"frame too large", 0, func(rc *rawClient) {
			rc.headers(1, false, connect...)
			rc.fr.WriteData(1, false, make([]byte, maxFrameSize+1))
		}, seen{typ: http2.FrameGoAway, code: http2.ErrCodeFrameSize}},
		{"invalid setting", 0, func(rc *rawClient) {
			rc.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 100})
		}, seen{typ: http2.FrameGoAway, code: http2.ErrCodeProtocol}},
		{"PUSH_PROMISE from client", 0, func(rc *rawClient) {
			rc.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true})
		}, seen{typ: http2.FrameGoAway, code: http2.ErrCodeProtocol}},
		{"stream limit", 1, func(rc *rawClient) {
			rc.headers(1, false, connect...)
			rc.headers(3, false, connect...)
		}, seen{typ: http2.FrameRSTStream, stream: 3, code: http2.ErrCodeRefusedStream}},
		{"invalid header name is a stream error", 0, func(rc *rawClient) {
			rc.headers(1, false, append(connect, "Bad-Name", "x")...)
			rc.headers(3, false, connect...)
		}, seen{typ: http2.FrameHeaders, stream: 3, status: "200"}},
		{"header list too large", 0, func(rc *rawClient) {
			rc.headers(1, false, append(connect, "baggage", strings.Repeat("b", maxHeaderListSize))...)
		}, seen{typ: http2.FrameHeaders, stream: 1, status: "431"}},
		{"non-CONNECT", 0, func(rc *rawClient) {
			rc.headers(1, true, ":method", "GET", ":scheme", "https", ":path", "/", ":authority", "x")
		}, seen{typ: http2.FrameHeaders, stream: 1, status: "405"}},
		{"DATA after END_STREAM", 0, func(rc *rawClient) {
			rc.headers(1, true, connect...)
			rc.fr.WriteData(1, false, []byte("late"))
		}, seen{typ: http2.FrameRSTStream, stream: 1, code: http2.ErrCodeStreamClosed}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc := newRawClient(t, c.max)
			c.send(rc)
			rc.expect(t, c.want)
		})
	}
}
