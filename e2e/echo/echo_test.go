package echo

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
)

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func TestEchoProtocols(t *testing.T) {
	ls := Listeners{HTTP: listen(t), TCP: listen(t), GRPC: listen(t), Raw: listen(t)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{Name: "server-1"}).Run(ctx, ls) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	for proto, ln := range map[string]net.Listener{ProtoHTTP: ls.HTTP, ProtoTCP: ls.TCP, ProtoGRPC: ls.GRPC} {
		s, err := Call(context.Background(), CallOptions{Proto: proto, Addr: ln.Addr().String(), N: 3, Marker: "marker-42"})
		if err != nil {
			t.Fatalf("%s: %v", proto, err)
		}
		if s.OK != 3 || s.Answered["server-1"] != 3 {
			t.Fatalf("%s: %s", proto, s)
		}
		if !strings.Contains(s.Last, "marker-42") {
			t.Fatalf("%s: answer %q lacks the marker", proto, s.Last)
		}
	}
}

func TestRawEchoHalfClose(t *testing.T) {
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{Name: "raw"}).Run(ctx, Listeners{Raw: ln}) }()
	t.Cleanup(func() { cancel(); <-done })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := strings.Repeat("x", 100000)
	go func() {
		io.WriteString(c, msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != msg {
		t.Fatalf("raw echo returned %d bytes, err %v", len(got), err)
	}
}

func TestCallReportsFailures(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	s, err := Call(context.Background(), CallOptions{Proto: ProtoTCP, Addr: addr, N: 2})
	if err != nil {
		t.Fatal(err)
	}
	if s.Failed != 2 || s.OK != 0 || len(s.Errors) != 2 {
		t.Fatalf("want 2 failures, got %s", s)
	}
	if _, err := Call(context.Background(), CallOptions{Proto: "udp", Addr: addr, N: 1}); err == nil {
		t.Fatal("unknown proto accepted")
	}
}
