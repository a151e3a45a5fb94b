package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
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
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/ambit-mesh/ambit/istiod/xds"
)

const nodeTokens = `tokens:
- {name: ztunnel-node-a, token: node-a-token-0123456789, node: node-a}
- {name: ztunnel-node-b, token: node-b-token-0123456789, node: node-b}
`

const nodePods = `apiVersion: v1
kind: Pod
metadata: {name: server-a, namespace: demo, uid: uid-server-a}
spec: {nodeName: node-a, serviceAccountName: server}
status: {phase: Running, podIP: 10.244.0.2, podIPs: [{ip: 10.244.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, uid: uid-client}
spec: {nodeName: node-b, serviceAccountName: client}
status: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: batch, namespace: demo, uid: uid-batch}
spec: {nodeName: node-b, serviceAccountName: batch}
status: {phase: Succeeded, podIP: 10.244.1.3, podIPs: [{ip: 10.244.1.3}]}
`

// TestNodeBoundTokens runs istiod in local mode (config dir, static node
// tokens) and checks that node-b's token is node-b's ztunnel and nothing
// else: certificates only for the service accounts of node-b's running
// pods, xDS only with node-b's ztunnel node ID.
func TestNodeBoundTokens(t *testing.T) {
	dir := t.TempDir()
	cfgDir := filepath.Join(dir, "config")
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "pods.yaml"), []byte(nodePods), 0o644); err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(nodeTokens), 0o600); err != nil {
		t.Fatal(err)
	}
	rootOut := filepath.Join(dir, "root.pem")
	cfg, err := parseConfig([]string{"--state-dir", filepath.Join(dir, "state"), "--token-file", tokens,
		"--config-dir", cfgDir, "--grpc-addr", "127.0.0.1:0", "--readiness-addr", "127.0.0.1:0", "--root-cert-out", rootOut},
		func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	started := make(chan addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, cfg, slog.New(slog.NewTextHandler(&logs, nil)), func(a addrs) { started <- a })
	}()
	defer func() { cancel(); <-done }()
	var a addrs
	select {
	case a = <-started:
	case err := <-done:
		t.Fatalf("istiod: %v\n%s", err, logs.String())
	}
	for {
		resp, err := http.Get("http://" + a.Readiness.String() + ReadyPath)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("istiod not ready: %v\n%s", err, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}

	rootPEM, err := os.ReadFile(rootOut)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	conn, err := grpc.NewClient(a.GRPC.String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "istiod.istio-system.svc"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	withToken := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	const tokA, tokB = "node-a-token-0123456789", "node-b-token-0123456789"

	certs := pb.NewIstioCertificateServiceClient(conn)
	for _, c := range []struct {
		name, token, ns, sa string
		want                codes.Code
		why                 string
	}{
		{"own node's pod", tokB, "demo", "client", codes.OK, ""},
		{"other node's pod", tokB, "demo", "server", codes.PermissionDenied, "no running pod with service account demo/server on node node-b"},
		{"istiod", tokB, "istio-system", "istiod", codes.PermissionDenied, "no running pod with service account istio-system/istiod on node node-b"},
		{"unknown service account", tokB, "demo", "nobody", codes.PermissionDenied, "no running pod with service account demo/nobody on node node-b"},
		{"terminated pod", tokB, "demo", "batch", codes.PermissionDenied, "no running pod with service account demo/batch on node node-b"},
		{"node-a for its pod", tokA, "demo", "server", codes.OK, ""},
		{"node-a for node-b's pod", tokA, "demo", "client", codes.PermissionDenied, "no running pod with service account demo/client on node node-a"},
	} {
		_, err := certs.CreateCertificate(withToken(c.token), &pb.IstioCertificateRequest{Csr: kubeCSR(t, c.ns, c.sa)})
		if status.Code(err) != c.want {
			t.Errorf("%s: CreateCertificate(%s/%s) = %v, want %v", c.name, c.ns, c.sa, err, c.want)
			continue
		}
		if c.want != codes.OK {
			msg := status.Convert(err).Message()
			wantID := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", c.ns, c.sa)
			if !strings.Contains(msg, c.why) || !strings.Contains(msg, wantID) {
				t.Errorf("%s: refusal %q does not name the identity %s and %q", c.name, msg, wantID, c.why)
			}
		}
	}

	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	ztunnelNode := func(node string) *core.Node {
		return &core.Node{
			Id:       "ztunnel~172.30.0.11~ztunnel-" + node + ".istio-system~istio-system.svc.cluster.local",
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{xds.MetadataNodeName: structpb.NewStringValue(node)}},
		}
	}
	sidecar := ztunnelNode("node-b")
	sidecar.Id = "sidecar~10.244.1.2~client.demo~demo.svc.cluster.local"
	for _, c := range []struct {
		name  string
		token string
		node  *core.Node
		want  codes.Code
		why   string
	}{
		{"own node", tokB, ztunnelNode("node-b"), codes.OK, ""},
		{"made-up node ID", tokB, &core.Node{Id: "anything"}, codes.PermissionDenied, `node ID "anything" has 1 '~'-separated parts`},
		{"as node-a", tokB, ztunnelNode("node-a"), codes.PermissionDenied, `is on node "node-a" (metadata NODE_NAME), not "node-b"`},
		{"no node", tokB, nil, codes.PermissionDenied, "carries no node"},
		{"sidecar", tokB, sidecar, codes.PermissionDenied, "is a sidecar, not a ztunnel"},
		{"node-a as itself", tokA, ztunnelNode("node-a"), codes.OK, ""},
		{"unknown token", "unknown-token-0123456789", ztunnelNode("node-b"), codes.Unauthenticated, "unknown bearer token"},
	} {
		sctx, scancel := context.WithTimeout(withToken(c.token), 10*time.Second)
		st, err := ads.DeltaAggregatedResources(sctx)
		if err == nil {
			err = st.Send(&discovery.DeltaDiscoveryRequest{Node: c.node, TypeUrl: xds.TypeAddress, ResourceNamesSubscribe: []string{"*"}})
		}
		var resp *discovery.DeltaDiscoveryResponse
		// A stream the server already ended fails Send with io.EOF; the
		// server's status comes from Recv.
		if err == nil || errors.Is(err, io.EOF) {
			resp, err = st.Recv()
		}
		scancel()
		if status.Code(err) != c.want {
			t.Errorf("%s: stream = %v, want %v", c.name, err, c.want)
			continue
		}
		if c.want == codes.OK {
			if resp.GetTypeUrl() != xds.TypeAddress || len(resp.GetResources()) == 0 {
				t.Errorf("%s: first response %v, want the addresses", c.name, resp)
			}
			continue
		}
		if msg := status.Convert(err).Message(); !strings.Contains(msg, c.why) {
			t.Errorf("%s: refusal %q does not say %q", c.name, msg, c.why)
		} else if c.want == codes.PermissionDenied && !strings.Contains(msg, "ztunnel of node node-b") {
			t.Errorf("%s: refusal %q does not name the caller's node", c.name, msg)
		}
	}
}
