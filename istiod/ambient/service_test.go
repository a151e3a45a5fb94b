package ambient

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"istio.io/istio/pkg/workloadapi"
)

func TestAppProtocol(t *testing.T) {
	str := func(s string) *string { return &s }
	for _, tc := range []struct {
		port  corev1.ServicePort
		want  workloadapi.AppProtocol
		label string
	}{
		{corev1.ServicePort{Name: "http", Port: 80}, workloadapi.AppProtocol_HTTP11, "name http"},
		{corev1.ServicePort{Name: "http-web", Port: 80}, workloadapi.AppProtocol_HTTP11, "name prefix"},
		{corev1.ServicePort{Name: "HTTP2-x", Port: 80}, workloadapi.AppProtocol_HTTP2, "case"},
		{corev1.ServicePort{Name: "grpc", Port: 80}, workloadapi.AppProtocol_GRPC, "grpc"},
		{corev1.ServicePort{Name: "grpc-web", Port: 80}, workloadapi.AppProtocol_UNKNOWN, "grpc-web"},
		{corev1.ServicePort{Name: "https", Port: 443}, workloadapi.AppProtocol_TLS, "https is TLS"},
		{corev1.ServicePort{Name: "tls-x", Port: 443}, workloadapi.AppProtocol_TLS, "tls"},
		{corev1.ServicePort{Name: "tcp", Port: 1}, workloadapi.AppProtocol_TCP, "tcp"},
		{corev1.ServicePort{Name: "web", Port: 8080}, workloadapi.AppProtocol_UNKNOWN, "unknown name"},
		{corev1.ServicePort{Name: "", Port: 3306}, workloadapi.AppProtocol_TCP, "well-known port"},
		{corev1.ServicePort{Name: "mysql", Port: 3306}, workloadapi.AppProtocol_UNKNOWN, "mysql has no value"},
		{corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolUDP}, workloadapi.AppProtocol_UNKNOWN, "udp"},
		{corev1.ServicePort{Name: "tcp", Port: 80, AppProtocol: str("http")}, workloadapi.AppProtocol_HTTP11, "appProtocol wins"},
		{corev1.ServicePort{Name: "x", Port: 80, AppProtocol: str("kubernetes.io/h2c")}, workloadapi.AppProtocol_HTTP2, "h2c"},
		{corev1.ServicePort{Name: "x", Port: 80, AppProtocol: str("kubernetes.io/ws")}, workloadapi.AppProtocol_HTTP11, "ws"},
		{corev1.ServicePort{Name: "x", Port: 80, AppProtocol: str("kubernetes.io/wss")}, workloadapi.AppProtocol_TLS, "wss"},
	} {
		if got := appProtocol(tc.port); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.label, got, tc.want)
		}
	}
}

func TestBuildService(t *testing.T) {
	ns := nsYAML("ns1", nil)
	base := svcYAML("ns1", "shop", map[string]string{"app": "shop"}, "")
	for _, tc := range []struct {
		name  string
		doc   string
		check func(*testing.T, *workloadapi.Service)
	}{
		{"ports and VIP", base, func(t *testing.T, s *workloadapi.Service) {
			if s.Hostname != "shop.ns1.svc.cluster.local" || !s.Canonical || len(s.Addresses) != 1 || s.IpFamilies != workloadapi.IPFamilies_AUTOMATIC {
				t.Errorf("%v", s)
			}
			// Named target ports are 0 here; workloads resolve them.
			if len(s.Ports) != 4 || s.Ports[0].TargetPort != 0 || s.Ports[1].TargetPort != 8081 || s.Ports[0].AppProtocol != workloadapi.AppProtocol_HTTP11 {
				t.Errorf("ports %v", s.Ports)
			}
		}},
		{"headless", replace(base, "clusterIP: 10.96.0.10", "clusterIP: None"), func(t *testing.T, s *workloadapi.Service) {
			if len(s.Addresses) != 0 {
				t.Errorf("addresses %v", s.Addresses)
			}
		}},
		{"dual stack", replace(base, "clusterIP: 10.96.0.10", "clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, fd00::10]\n  ipFamilies: [IPv4, IPv6]"), func(t *testing.T, s *workloadapi.Service) {
			if len(s.Addresses) != 2 || s.IpFamilies != workloadapi.IPFamilies_DUAL {
				t.Errorf("%v", s)
			}
		}},
		{"ipv6 only", replace(base, "clusterIP: 10.96.0.10", "clusterIP: fd00::10\n  ipFamilies: [IPv6]"), func(t *testing.T, s *workloadapi.Service) {
			if s.IpFamilies != workloadapi.IPFamilies_IPV6_ONLY || len(s.Addresses[0].Address) != 16 {
				t.Errorf("%v", s)
			}
		}},
		{"internal traffic policy local", replace(base, "clusterIP: 10.96.0.10", "clusterIP: 10.96.0.10\n  internalTrafficPolicy: Local\n  publishNotReadyAddresses: true"), func(t *testing.T, s *workloadapi.Service) {
			lb := s.LoadBalancing
			if lb == nil || lb.Mode != workloadapi.LoadBalancing_STRICT || len(lb.RoutingPreference) != 1 || lb.HealthPolicy != workloadapi.LoadBalancing_ALLOW_ALL {
				t.Errorf("%v", lb)
			}
		}},
		{"prefer close", replace(base, "clusterIP: 10.96.0.10", "clusterIP: 10.96.0.10\n  trafficDistribution: PreferClose"), func(t *testing.T, s *workloadapi.Service) {
			lb := s.LoadBalancing
			if lb == nil || lb.Mode != workloadapi.LoadBalancing_FAILOVER || len(lb.RoutingPreference) != 3 {
				t.Errorf("%v", lb)
			}
		}},
		{"prefer same node by annotation", replace(base, "  namespace: ns1\n", "  namespace: ns1\n  annotations:\n    networking.istio.io/traffic-distribution: PreferSameNode\n"), func(t *testing.T, s *workloadapi.Service) {
			lb := s.LoadBalancing
			if lb == nil || len(lb.RoutingPreference) != 5 {
				t.Errorf("%v", lb)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap := snapshot(t, ns, tc.doc)
			idx := NewIndex(snap)
			s := BuildService(snap.Services["ns1/shop"], idx, Options{})
			if s == nil {
				t.Fatal("nil service")
			}
			tc.check(t, s)
		})
	}
	ext := snapshot(t, svcYAML("ns1", "ext", nil, "  type: ExternalName\n  externalName: example.com\n"))
	if s := BuildService(ext.Services["ns1/ext"], nil, Options{}); s != nil {
		t.Errorf("ExternalName service built: %v", s)
	}
}

func replace(s, old, new string) string { return strings.Replace(s, old, new, 1) }
