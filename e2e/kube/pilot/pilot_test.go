package pilot_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/pilot"
	"github.com/ambit-mesh/ambit/istiod/ambient"
	"github.com/ambit-mesh/ambit/istiod/config"
	"github.com/ambit-mesh/ambit/istiod/config/kube"
	"github.com/ambit-mesh/ambit/istiod/xds"
)

func TestMain(m *testing.M) { cluster.Main(m, cluster.Options{}) }

// startTimeout bounds a cold build of pilot-discovery (and of the cluster's
// binaries before it) plus a start.
const startTimeout = 45 * time.Minute

// startPilot starts pilot-discovery against c for one test; a missing binary
// is built, unless -short or AMBIT_KUBE_NO_BUILD=1, which skip (fail under
// CI=true).
func startPilot(t *testing.T, c *cluster.Cluster) *pilot.Pilot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if testing.Short() && os.Getenv(pilot.EnvBinary) == "" {
		v, err := pilot.IstioVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		bin, err := pilot.BinaryPath(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(bin); err != nil {
			skipOrFail(t, fmt.Errorf("%w: -short and %s is not built (e2e/kube/pilot/build.sh builds it in ~8 min)", pilot.ErrNoBinary, bin))
		}
	}
	start := time.Now()
	p, err := pilot.Start(ctx, c, pilot.Options{Progress: tWriter{t}})
	if err != nil {
		skipOrFail(t, err)
	}
	t.Logf("pilot-discovery ready in %v (log %s)", time.Since(start).Round(time.Millisecond), p.Log)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- tail of pilot-discovery's log ---\n%s", p.Tail(60))
		}
		if err := p.Stop(); err != nil {
			t.Errorf("stopping pilot-discovery: %v", err)
		}
	})
	return p
}

func skipOrFail(t *testing.T, err error) {
	t.Helper()
	if errors.Is(err, pilot.ErrNoBinary) && os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	t.Fatal(err)
}

// pilotWatch opens a workload discovery stream to pilot's secure port as a
// ztunnel would: TLS verified against pilot's root, a token of
// istio-system/ztunnel with audience istio-ca (pilot's TokenReview
// authentication and its xDS identity check both stay on).
func pilotWatch(ctx context.Context, t *testing.T, c *cluster.Cluster, p *pilot.Pilot) *pilot.Watcher {
	t.Helper()
	tlsConf, token := ztunnelCredentials(ctx, t, c, p)
	id, md := pilot.ZtunnelNode("172.18.0.10", "ztunnel-a", pilot.Namespace, "ztunnel", nodeA)
	w, err := pilot.Watch(pilot.WatchOptions{
		Address: p.SecureGRPCAddr, TLS: tlsConf, Token: token, NodeID: id, Metadata: md,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// ztunnelCredentials returns what a ztunnel presents to pilot: pilot's root
// for TLS and a token of the ztunnel service account (created on first use).
func ztunnelCredentials(ctx context.Context, t *testing.T, c *cluster.Cluster, p *pilot.Pilot) (*tls.Config, string) {
	t.Helper()
	if _, err := c.Client.CoreV1().ServiceAccounts(pilot.Namespace).Get(ctx, "ztunnel", metav1.GetOptions{}); err != nil {
		if _, err := c.CreateServiceAccount(ctx, pilot.Namespace, "ztunnel"); err != nil {
			t.Fatal(err)
		}
	}
	token, err := c.CreateToken(ctx, pilot.Namespace, "ztunnel", []string{pilot.CAAudience}, 0)
	if err != nil {
		t.Fatal(err)
	}
	root, err := p.RootCert(ctx, pilot.Namespace)
	if err != nil {
		t.Fatalf("pilot's root certificate: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(root) {
		t.Fatalf("pilot's root certificate does not parse:\n%s", root)
	}
	return &tls.Config{RootCAs: pool, ServerName: pilot.ServerName, MinVersion: tls.VersionTLS12}, token
}

// ambitSide runs Ambit's control-plane path in process on the same API
// server: the Kubernetes config source (istiod/config/kube) feeds
// ambient.Build, whose resources the workload xDS server (istiod/xds) serves
// on loopback; the returned watcher reads them back over delta ADS, as the
// one for pilot does. (istiod's binary does not run the Kubernetes source
// yet; this is the same code it will run.)
func ambitSide(ctx context.Context, t *testing.T, c *cluster.Cluster, ready func(*config.Snapshot) error) (*pilot.Watcher, []error) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	src, err := kube.NewForConfig(rest.CopyConfig(c.Config), kube.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	srcDone := make(chan struct{})
	go func() {
		defer close(srcDone)
		_ = src.Run(sctx)
	}()
	t.Cleanup(func() { cancel(); <-srcDone })

	var snap *config.Snapshot
	if err := cluster.Eventually(ctx, "Ambit's Kubernetes source to see the fixture", func(context.Context) error {
		snap = src.Snapshot()
		return ready(snap)
	}); err != nil {
		t.Fatal(err)
	}
	res, buildErrs := ambient.Build(snap, ambient.Options{})

	srv, err := xds.New(xds.Options{Debounce: -1, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv.Set(xds.Resources{Addresses: res.Addresses(), Authorizations: res.Authorizations})
	srv.Flush()
	gs := grpc.NewServer()
	srv.Register(gs)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)

	id, md := pilot.ZtunnelNode("172.18.0.10", "ztunnel-a", pilot.Namespace, "ztunnel", nodeA)
	w, err := pilot.Watch(pilot.WatchOptions{Address: l.Addr().String(), NodeID: id, Metadata: md})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	if err := w.WaitFor(ctx, "Ambit's xDS state", func(pilot.Resources) error { return nil }); err != nil {
		t.Fatal(err)
	}
	return w, buildErrs
}
