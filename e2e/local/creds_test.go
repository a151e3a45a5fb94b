package local

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/identity"
)

// credsTopology: a pod on each node, calling across nodes.
const credsTopology = `
trustDomain: cluster.local
nodes: [{name: node-a}, {name: node-b}]
namespaces:
  - {name: demo, labels: {istio.io/dataplane-mode: ambient}}
pods:
  - {name: client, namespace: demo, node: node-a, serviceAccount: client, labels: {app: client}, run: ["ambit-echo", "server", "-name", "{{name}}"]}
  - {name: server-b, namespace: demo, node: node-b, serviceAccount: server, labels: {app: echo-b}, run: ["ambit-echo", "server", "-name", "{{name}}"]}
`

// istiodAddr is where local mode's istiod serves the CA and xDS, reachable
// from the node namespaces.
const istiodAddr = "172.30.0.1:15012"

// TestNodeTokensBound: in a running local mesh, node-b's token (the file
// local mode gives node-b's ztunnel) gets certificates only for node-b's
// pods and xDS only as node-b's ztunnel, while the mesh works.
func TestNodeTokensBound(t *testing.T) {
	requireBinaries(t)
	m := newMesh(t)
	m.must("up", "-f", writeFile(t, "creds.yaml", credsTopology))
	for _, f := range []string{"tokens.yaml", "nodes/node-a/token", "nodes/node-b/token"} {
		fi, err := os.Stat(filepath.Join(m.state, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	tokB, err := os.ReadFile(filepath.Join(m.state, "nodes/node-b/token"))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(filepath.Join(m.state, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)

	// Dial istiod from node-b's namespace, as its ztunnel does.
	ns, err := netns.OpenName("ambitl-node-node-b") // ctl/local NodeNetns("node-b")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	socks := &netns.Sockets{NS: ns}
	conn, err := grpc.NewClient(istiodAddr,
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return socks.Dial(ctx, "tcp", addr) }),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "istiod.istio-system.svc"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	bctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctx := metadata.AppendToOutgoingContext(bctx, "authorization", "Bearer "+strings.TrimSpace(string(tokB)))

	// Certificates through ztunnel's own CA client, with node-b's token file.
	dial := grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return socks.Dial(ctx, "tcp", addr) })
	certs, err := identity.NewCAClient(identity.CAClientOptions{
		Address: istiodAddr, ServerName: "istiod.istio-system.svc", RootCAs: roots,
		Token: identity.FileToken(filepath.Join(m.state, "nodes/node-b/token")), DialOptions: []grpc.DialOption{dial},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer certs.Close()
	for _, c := range []struct {
		ns, sa string
		want   codes.Code
	}{
		{"demo", "server", codes.OK},               // server-b runs on node-b
		{"demo", "client", codes.PermissionDenied}, // client runs on node-a
		{"istio-system", "istiod", codes.PermissionDenied},
	} {
		_, err := certs.Fetch(bctx, spiffe.ID{TrustDomain: "cluster.local", Namespace: c.ns, ServiceAccount: c.sa})
		if grpcstatus.Code(err) != c.want {
			t.Errorf("node-b's token for %s/%s: %v, want %v", c.ns, c.sa, err, c.want)
		} else if err != nil && !strings.Contains(err.Error(), "on node node-b") {
			t.Errorf("node-b's token for %s/%s: refusal %q does not name the node", c.ns, c.sa, err)
		}
	}

	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	for _, c := range []struct {
		node, ip string
		want     codes.Code
	}{
		{"node-a", "172.30.0.10", codes.PermissionDenied},
		{"node-b", "172.30.0.11", codes.OK},
	} {
		sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
		st, err := ads.DeltaAggregatedResources(sctx)
		if err == nil {
			err = st.Send(&discovery.DeltaDiscoveryRequest{
				Node: &core.Node{
					Id:       "ztunnel~" + c.ip + "~ztunnel-" + c.node + ".istio-system~istio-system.svc.cluster.local",
					Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"NODE_NAME": structpb.NewStringValue(c.node)}},
				},
				TypeUrl: "type.googleapis.com/istio.workload.Address", ResourceNamesSubscribe: []string{"*"},
			})
		}
		if err == nil {
			_, err = st.Recv()
		}
		scancel()
		if grpcstatus.Code(err) != c.want {
			t.Errorf("node-b's token streaming as %s's ztunnel: %v, want %v", c.node, err, c.want)
		}
	}

	// The mesh works: node-a's client reaches node-b's server through both
	// ztunnels, each with its own node's token.
	var serverIP netip.Addr
	for _, p := range m.status().Pods {
		if p.Name == "server-b" {
			serverIP, _ = netip.ParseAddr(p.IP)
		}
	}
	out := m.mustCall(t, converge, "demo/client", "http", netip.AddrPortFrom(serverIP, 8080).String(), newMarker("creds"), 3)
	if !strings.Contains(out, "answered by server-b(3)") {
		t.Errorf("not answered by server-b: %s", out)
	}
}
