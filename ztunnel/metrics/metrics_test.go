package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

func id(ns, sa string) *spiffe.ID {
	v := spiffe.ID{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa}
	return &v
}

func TestBuild(t *testing.T) {
	client := &workloadapi.Workload{Uid: "c1//Pod/a/client-1", Name: "client-1", Namespace: "a",
		WorkloadName: "client", CanonicalName: "client-app", CanonicalRevision: "v1", ClusterId: "c1"}
	echo := &workloadapi.Workload{Uid: "c1//Pod/b/echo-1", Name: "echo-1", Namespace: "b"}
	svc := &workloadapi.Service{Name: "echo", Namespace: "b", Hostname: "echo.b.svc.cluster.local"}

	tests := []struct {
		name string
		c    Conn
		want map[string]string
	}{
		{
			name: "source side to a service over HBONE",
			c: Conn{Reporter: ReporterSource,
				Source:      Peer{Workload: client, Identity: id("a", "client")},
				Destination: Peer{Workload: echo, Identity: id("b", "echo")},
				Service:     svc, MutualTLS: true},
			want: map[string]string{
				"reporter": "source", "source_workload": "client", "source_canonical_service": "client-app",
				"source_canonical_revision": "v1", "source_workload_namespace": "a",
				"source_principal": "spiffe://cluster.local/ns/a/sa/client", "source_app": "client-app",
				"source_version": "v1", "source_cluster": "c1",
				"destination_service": "echo.b.svc.cluster.local", "destination_service_namespace": "b",
				"destination_service_name": "echo", "destination_workload": "echo-1",
				"destination_canonical_service": "echo-1", "destination_canonical_revision": "latest",
				"destination_workload_namespace": "b", "destination_principal": "spiffe://cluster.local/ns/b/sa/echo",
				"destination_app": "echo-1", "destination_version": "latest", "destination_cluster": "unknown",
				"request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "mutual_tls",
			},
		},
		{
			name: "destination side, plaintext, unknown source, denied",
			c:    Conn{Reporter: ReporterDestination, Destination: Peer{Workload: echo}, Flags: FlagDenied},
			want: map[string]string{
				"reporter": "destination", "source_workload": "unknown", "source_principal": "unknown",
				"source_workload_namespace": "unknown", "source_app": "unknown",
				"destination_service": "echo-1", "destination_service_name": "echo-1",
				"destination_service_namespace": "b", "destination_principal": "unknown",
				"response_flags": "DENY", "connection_security_policy": "none",
			},
		},
		{
			name: "passthrough to outside the mesh, source from ZDS only",
			c:    Conn{Reporter: ReporterSource, Source: Peer{Namespace: "a", Name: "client-1", Identity: id("a", "default")}},
			want: map[string]string{
				"source_workload": "client-1", "source_workload_namespace": "a", "source_app": "client-1",
				"source_principal":    "spiffe://cluster.local/ns/a/sa/default",
				"destination_service": "unknown", "destination_workload": "unknown",
				"connection_security_policy": "none",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vals := Build(tt.c).Values()
			if len(vals) != len(LabelNames) {
				t.Fatalf("%d values for %d labels", len(vals), len(LabelNames))
			}
			got := map[string]string{}
			for i, n := range LabelNames {
				got[n] = vals[i]
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestExposition(t *testing.T) {
	m := New()
	l := Build(Conn{Reporter: ReporterDestination, Source: Peer{Identity: id("a", "client")}, MutualTLS: true})
	m.Opened(l)
	m.Closed(l, 10, 20)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", Path, nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`istio_tcp_connections_opened_total{`,
		`istio_tcp_connections_closed_total{`,
		`istio_tcp_sent_bytes_total{`,
		`istio_tcp_received_bytes_total{`,
		`source_principal="spiffe://cluster.local/ns/a/sa/client"`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("exposition lacks %s", want)
		}
	}
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "istio_tcp_sent_bytes_total{") && !strings.HasSuffix(line, " 10") {
			t.Errorf("sent bytes line %q, want value 10", line)
		}
		if strings.HasPrefix(line, "istio_tcp_received_bytes_total{") && !strings.HasSuffix(line, " 20") {
			t.Errorf("received bytes line %q, want value 20", line)
		}
	}
}
