package proxy

import (
	"errors"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/route"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

const cfgYAML = `
workloads:
- uid: c1//Pod/a/client
  name: client
  namespace: a
  addresses: ["10.1.0.1"]
  serviceAccount: client
  tunnelProtocol: HBONE
  node: node-a
  canonicalName: client-app
  canonicalRevision: v1
- uid: c1//Pod/b/echo
  name: echo
  namespace: b
  addresses: ["10.1.0.2", "fd00::2"]
  serviceAccount: echo
  tunnelProtocol: HBONE
  node: node-a
  authorizationPolicies: [b/allow-a]
- uid: legacy-uid
  name: legacy
  namespace: b
  addresses: ["10.1.0.3"]
  node: node-a
- uid: remote
  name: remote
  namespace: b
  addresses: ["10.1.0.4"]
  tunnelProtocol: HBONE
  node: node-b
policies:
- name: allow-a
  namespace: b
  scope: WORKLOAD_SELECTOR
  action: ALLOW
  groups:
  - rules:
    - matches:
      - namespaces: [{exact: a}]
- name: strict
  namespace: istio-system
  scope: GLOBAL
  action: DENY
  groups:
  - rules:
    - matches:
      - notPrincipals: [{presence: {}}]
        destinationPorts: [9999]
`

func view(t *testing.T) *state.View {
	t.Helper()
	snap, err := state.ParseConfig([]byte(cfgYAML))
	if err != nil {
		t.Fatal(err)
	}
	s := state.New(state.Options{})
	if err := s.Set(snap); err != nil {
		t.Fatal(err)
	}
	return s.Load()
}

func mustID(t *testing.T, s string) spiffe.ID {
	t.Helper()
	id, err := spiffe.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestPodWorkload(t *testing.T) {
	v := view(t)
	if w := PodWorkload(v, Pod{UID: "c1//Pod/a/client"}); w.GetName() != "client" {
		t.Errorf("by uid: %v", w)
	}
	if w := PodWorkload(v, Pod{UID: "k8s-pod-uid", Namespace: "b", Name: "echo"}); w.GetUid() != "c1//Pod/b/echo" {
		t.Errorf("by namespace/name: %v", w)
	}
	if w := PodWorkload(v, Pod{UID: "x", Namespace: "b", Name: "nope"}); w != nil {
		t.Errorf("unknown pod: %v", w)
	}
}

func TestDecideOutbound(t *testing.T) {
	v := view(t)
	client := Pod{UID: "zds-uid-client", Name: "client", Namespace: "a", ServiceAccount: "client"}
	id := mustID(t, "spiffe://cluster.local/ns/a/sa/client")
	src := netip.MustParseAddr("10.1.0.1")
	tp := regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-00$`)

	out, err := DecideOutbound(v, client, id, "node-a", src, netip.MustParseAddrPort("10.1.0.2:8080"), "")
	if err != nil {
		t.Fatal(err)
	}
	if out.Kind != route.HBONE || out.Target.String() != "10.1.0.2:15008" || out.Authority.String() != "10.1.0.2:8080" ||
		out.DestIdentity.String() != "spiffe://cluster.local/ns/b/sa/echo" || out.SourceIdentity != id {
		t.Errorf("hbone decision: %+v", out.Decision)
	}
	if out.Headers.Forwarded != "for=10.1.0.1" || !tp.MatchString(out.Headers.Traceparent) ||
		out.Headers.Baggage != "k8s.namespace.name=a,k8s.pod.name=client,service.name=client-app,service.version=v1" {
		t.Errorf("headers: %+v", out.Headers)
	}
	out2, _ := DecideOutbound(v, client, id, "node-a", src, netip.MustParseAddrPort("10.1.0.2:8080"), "")
	if out2.Headers.Traceparent == out.Headers.Traceparent {
		t.Errorf("traceparent not random: %s", out.Headers.Traceparent)
	}
	keep := "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
	if out3, _ := DecideOutbound(v, client, id, "node-a", src, netip.MustParseAddrPort("10.1.0.2:8080"), keep); out3.Headers.Traceparent != keep {
		t.Errorf("given traceparent replaced: %s", out3.Headers.Traceparent)
	}

	// Not HBONE: plaintext to the workload; outside the mesh: passthrough.
	for _, dst := range []string{"10.1.0.3:80", "192.0.2.9:443"} {
		out, err := DecideOutbound(v, client, id, "node-a", src, netip.MustParseAddrPort(dst), "")
		if err != nil || out.Kind != route.Passthrough || out.Target.String() != dst || out.Headers != (out.Headers) {
			t.Errorf("%s: %+v %v", dst, out.Decision, err)
		}
	}

	// A pod the state does not know yet still routes, as its ZDS identity.
	stranger := Pod{UID: "u9", Name: "new", Namespace: "c", ServiceAccount: ""}
	sid, _ := stranger.Identity("cluster.local")
	if sid.String() != "spiffe://cluster.local/ns/c/sa/default" {
		t.Fatalf("identity %s", sid)
	}
	out, err = DecideOutbound(v, stranger, sid, "node-a", netip.MustParseAddr("10.9.9.9"), netip.MustParseAddrPort("[fd00::2]:8080"), "")
	if err != nil || out.Kind != route.HBONE || out.SourceIdentity != sid || out.Target.String() != "[fd00::2]:15008" ||
		out.Headers.Baggage != "k8s.namespace.name=c,k8s.pod.name=new" {
		t.Errorf("unknown source: %+v %+v %v", out.Decision, out.Headers, err)
	}
	if f := Forwarded(netip.MustParseAddr("fd00::1")); f != `for="[fd00::1]"` {
		t.Errorf("forwarded v6: %s", f)
	}
}

func TestDecideInbound(t *testing.T) {
	v := view(t)
	echo := Pod{UID: "k8s-uid-echo", Name: "echo", Namespace: "b", ServiceAccount: "echo"}
	aID := mustID(t, "spiffe://cluster.local/ns/a/sa/client")
	cID := mustID(t, "spiffe://cluster.local/ns/c/sa/x")
	src := netip.MustParseAddr("10.1.0.1")
	tests := []struct {
		name    string
		pod     Pod
		c       InboundConn
		wantErr error
		allow   bool
	}{
		{"allowed peer", echo, InboundConn{Peer: &aID, Src: src, Dst: netip.MustParseAddrPort("10.1.0.2:8080")}, nil, true},
		{"allowed peer v6", echo, InboundConn{Peer: &aID, Src: src, Dst: netip.MustParseAddrPort("[fd00::2]:8080")}, nil, true},
		{"peer not allowed", echo, InboundConn{Peer: &cID, Src: src, Dst: netip.MustParseAddrPort("10.1.0.2:8080")}, nil, false},
		{"plaintext not allowed by ALLOW", echo, InboundConn{Src: src, Dst: netip.MustParseAddrPort("10.1.0.2:8080")}, nil, false},
		{"other pod's address", echo, InboundConn{Peer: &aID, Src: src, Dst: netip.MustParseAddrPort("10.1.0.3:80")}, ErrNotPodAddress, false},
		{"pod without workload", Pod{UID: "?", Name: "ghost", Namespace: "b"}, InboundConn{Dst: netip.MustParseAddrPort("10.1.0.2:80")}, ErrNoWorkload, false},
		{"plaintext, no policy", Pod{UID: "legacy-uid"}, InboundConn{Src: src, Dst: netip.MustParseAddrPort("10.1.0.3:80")}, nil, true},
		{"plaintext, global strict port", Pod{UID: "legacy-uid"}, InboundConn{Src: src, Dst: netip.MustParseAddrPort("10.1.0.3:9999")}, nil, false},
		{"mtls, global strict port", Pod{UID: "legacy-uid"}, InboundConn{Peer: &cID, Src: src, Dst: netip.MustParseAddrPort("10.1.0.3:9999")}, nil, true},
		{"workload on another node", Pod{UID: "remote"}, InboundConn{Peer: &aID, Dst: netip.MustParseAddrPort("10.1.0.4:80")}, route.ErrNotLocal, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := DecideInbound(v, tt.pod, "node-a", "", tt.c)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if in.Allow != tt.allow {
				t.Errorf("allow = %v (%s), want %v", in.Allow, in.Reason, tt.allow)
			}
			if in.Target != netip.AddrPortFrom(tt.c.Dst.Addr().Unmap(), tt.c.Dst.Port()) {
				t.Errorf("target %s", in.Target)
			}
		})
	}
}

func TestBaggageEscapes(t *testing.T) {
	w := sourceWorkload(view(t), Pod{UID: "u", Name: "a b,c", Namespace: "n"}, "node", "cluster.local")
	if b := Baggage(w); !strings.Contains(b, "k8s.pod.name=a%20b%2Cc") {
		t.Errorf("baggage %q", b)
	}
}

func TestInboundService(t *testing.T) {
	snap, err := state.ParseConfig([]byte(`
workloads:
- uid: w1
  name: echo
  namespace: b
  addresses: ["10.1.0.2"]
  serviceAccount: echo
  services:
    b/echo.b.svc.cluster.local: {ports: [{servicePort: 80, targetPort: 8080}]}
    b/raw.b.svc.cluster.local: {ports: [{servicePort: 9000}]}
    b/gone.b.svc.cluster.local: {ports: [{servicePort: 7070, targetPort: 7070}]}
services:
- {name: echo, namespace: b, hostname: echo.b.svc.cluster.local, addresses: [{address: "10.96.0.1"}], ports: [{servicePort: 80, targetPort: 8080}]}
- {name: raw, namespace: b, hostname: raw.b.svc.cluster.local, addresses: [{address: "10.96.0.2"}], ports: [{servicePort: 9000}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	s := state.New(state.Options{})
	if err := s.Set(snap); err != nil {
		t.Fatal(err)
	}
	v := s.Load()
	w := v.WorkloadByUID("w1")
	for port, want := range map[uint16]string{8080: "echo", 9000: "raw", 80: "", 7070: "", 1234: ""} {
		got := ""
		if svc := InboundService(v, w, port); svc != nil {
			got = svc.GetName()
		}
		if got != want {
			t.Errorf("port %d: service %q, want %q", port, got, want)
		}
	}
	if InboundService(v, nil, 8080) != nil {
		t.Error("a nil workload has a service")
	}
}
