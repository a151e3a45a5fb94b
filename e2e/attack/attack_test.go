package attack

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"

	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
	"github.com/ambit-mesh/ambit/pkg/testpki"
)

const nsPrefix = "ambit-t-attack-"

func TestMain(m *testing.M) { netnstest.Main(m, nsPrefix) }

// Sockets made in a namespace connect there, fast connects included (the
// connect completes before the wait starts), refusals are errors, and Close
// leaves no thread of the process in the namespace.
func TestSocketsDialInNamespace(t *testing.T) {
	netnstest.RequireRoot(t)
	self, err := netns.IDOfPath("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	name := nsPrefix + "sockets"
	ns := netnstest.New(t, name)
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		netnstest.SkipOrFail(t, "ip link set lo up: %v: %s", err, out)
	}
	ln, err := netns.ListenIn(context.Background(), ns, "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	s, err := NewSockets(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := netip.MustParseAddrPort(ln.Addr().String())
	for i := 0; i < 300; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := s.Dial(ctx, addr)
		cancel()
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		b := []byte{byte(i)}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Write(b)
		if err == nil {
			_, err = io.ReadFull(c, b)
		}
		c.Close()
		if err != nil || b[0] != byte(i) {
			t.Fatalf("round trip %d: %v (%d)", i, err, b[0])
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := s.Dial(ctx, netip.AddrPortFrom(addr.Addr(), 1)); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("dial to a closed port: %v, want ECONNREFUSED", err)
	}
	// The host has no listener on this port: reaching the one in ns proves
	// the socket was made there.
	if _, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		t.Logf("note: %s also answers in the test's own namespace", addr)
	}
	s.Close()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if id, err := netns.IDOfPath("/proc/self/task/" + task.Name() + "/ns/net"); err == nil && id != self {
			t.Errorf("thread %s is still in namespace %v after Close", task.Name(), id)
		}
	}
}

// H2Conn gets statuses per stream, and RapidReset sends pairs the server
// sees, against Go's own HTTP/2 server.
func TestH2Conn(t *testing.T) {
	ca := testpki.NewCA(t, "cluster.local")
	cert := ca.Leaf(t, "demo", "attacker")
	srvCert := ca.Leaf(t, "demo", "server")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srvCert}, NextProtos: []string{"h2"}, ClientAuth: tls.RequireAnyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect || strings.HasSuffix(r.Host, ":15006") {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	srv := &http.Server{Handler: h}
	go srv.Serve(ln) // HTTP/2: the listener's conns are TLS with ALPN h2
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dial := func() *H2Conn {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewH2Conn(ctx, nc, cert)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := dial()
	defer c.Close()
	for authority, want := range map[string]int{"10.0.0.1:9000": 200, "10.0.0.1:15006": 403} {
		if _, a := c.Ask(ctx, authority); a.Status != want {
			t.Errorf("CONNECT %s: %v, want status %d", authority, a, want)
		}
	}

	r := dial()
	defer r.Close()
	rctx, rcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer rcancel()
	n, err := RapidReset(rctx, r, "10.0.0.1:9000", 16)
	if n == 0 {
		t.Fatalf("rapid reset sent no pair: %v", err)
	}
	t.Logf("rapid reset: %d pairs in 300ms (%v; GOAWAY %v)", n, err, r.GoAway())
}

// ZDSTakeover reports what a fake agent sends it: the bad hello's fate, the
// requests and the descriptors among them.
func TestZDSTakeover(t *testing.T) {
	path := t.TempDir() + "/zds.sock"
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	add, err := proto.Marshal(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: "u1"}}})
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	go func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				n, err := c.Read(buf)
				var hello zdsapi.ZdsHello
				if err != nil || proto.Unmarshal(buf[:n], &hello) != nil || hello.Version != zdsapi.Version_V1 {
					return // a bad hello: hang up
				}
				// One add with a netns descriptor, as today's agent sends.
				if _, _, err := c.WriteMsgUnix(add, unix.UnixRights(int(self.Fd())), nil); err != nil {
					return
				}
				c.Read(buf)                       // the ack
				time.Sleep(50 * time.Millisecond) // then hang up; the attacker reconnects
			}()
		}
	}()
	res, err := ZDSTakeover(path, 500*time.Millisecond, 3)
	if err != nil {
		t.Fatal(err)
	}
	if res.BadHello != "closed" || res.Connections != 3 || res.Requests != 3 || res.FDs != 3 {
		t.Errorf("ZDSTakeover = %+v, want bad hello closed, 3 connections, 3 requests, 3 fds", res)
	}
}
