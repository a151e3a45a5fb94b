package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/istiod/ambient"
	"github.com/ambit-mesh/ambit/istiod/ca/catest"
	"github.com/ambit-mesh/ambit/istiod/config"
	"github.com/ambit-mesh/ambit/istiod/xds"
)

// xdsServer serves istiod's workload discovery over TLS from the test CA's
// root on loopback until stopped.
type xdsServer struct {
	srv  *xds.Server
	gs   *grpc.Server
	addr string
}

func startXDS(t *testing.T, c *catest.CA, addr string) *xdsServer {
	t.Helper()
	srv, err := xds.New(xds.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	tlsConf, err := c.Authority.ServingTLSConfig([]string{c.ServerName}, nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConf)))
	srv.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	x := &xdsServer{srv: srv, gs: gs, addr: lis.Addr().String()}
	t.Cleanup(gs.Stop)
	return x
}

// set pushes the workload API resources of pods (name → IP) in namespace
// "shop".
func (x *xdsServer) set(t *testing.T, pods map[string]string) {
	t.Helper()
	snap := config.NewSnapshot()
	snap.Namespaces["shop"] = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}
	for name, ip := range pods {
		snap.Pods["shop/"+name] = &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec:       corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "cart"},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
		}
	}
	res, errs := ambient.Build(snap, ambient.Options{})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	x.srv.Set(xds.Resources{Addresses: res.Addresses(), Authorizations: res.Authorizations})
	x.srv.Flush()
}

// TestStateFromXDS runs ztunnel without --local-config: its state comes from
// istiod's workload discovery, readiness waits for it, changes apply, and the
// last state stays when istiod goes away.
func TestStateFromXDS(t *testing.T) {
	c := catest.Start(t, catest.Options{})
	x := startXDS(t, c, "127.0.0.1:0")
	dir := t.TempDir()
	rootFile, tokenFile := filepath.Join(dir, "root-cert.pem"), filepath.Join(dir, "token")
	writeFile(t, rootFile, string(c.RootsPEM))
	writeFile(t, tokenFile, c.Token)
	cfg, err := parseConfig([]string{
		"--node", "node-a", "--zds-socket", filepath.Join(dir, "absent.sock"), "--ca-addr", c.Addr, "--xds-addr", x.addr,
		"--ca-root", rootFile, "--ca-server-name", c.ServerName, "--token-file", tokenFile,
		"--metrics-addr", "127.0.0.1:0", "--readiness-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
	}, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	got := make(chan addrs, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.DiscardHandler), func(a addrs) { got <- a }) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("run did not return")
		}
	}()
	var a addrs
	select {
	case a = <-got:
	case err := <-done:
		t.Fatalf("exited: %v", err)
	}
	ready := "http://" + a.Readiness.String() + "/healthz/ready"
	dump := "http://" + a.Admin.String() + "/config_dump"

	// Nothing published yet: the state condition names xDS.
	code, body, err := httpGet(ready)
	if err != nil || code != 503 || !strings.Contains(body, "state: workload xDS from "+x.addr+" not synced yet") {
		t.Fatalf("before sync: %d %q %v", code, body, err)
	}
	x.set(t, map[string]string{"cart-1": "10.1.0.5"})
	eventually(t, "xDS synced", 10*time.Second, func() error {
		code, body, err := httpGet(ready)
		if err != nil {
			return err
		}
		if strings.Contains(body, "state:") {
			return fmt.Errorf("%d %q", code, body)
		}
		return nil
	})
	hasPods := func(want ...string) func() error {
		return func() error {
			_, body, err := httpGet(dump)
			if err != nil {
				return err
			}
			for _, w := range want {
				if !strings.Contains(body, w) {
					return fmt.Errorf("config_dump lacks %q", w)
				}
			}
			return nil
		}
	}
	eventually(t, "workload in the store", 10*time.Second, hasPods("cart-1", "10.1.0.5"))
	x.set(t, map[string]string{"cart-1": "10.1.0.5", "cart-2": "10.1.0.6"})
	eventually(t, "second workload", 10*time.Second, hasPods("cart-2", "10.1.0.6"))

	// istiod goes away: the last state stays, readiness too.
	x.gs.Stop()
	for range 5 {
		if err := hasPods("cart-1", "cart-2")(); err != nil {
			t.Fatalf("state lost after istiod stopped: %v", err)
		}
		if code, body, _ := httpGet(ready); strings.Contains(body, "state:") {
			t.Fatalf("not ready after istiod stopped: %d %q", code, body)
		}
		time.Sleep(100 * time.Millisecond) // spacing of repeated checks, not readiness
	}
}
