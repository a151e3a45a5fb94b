package ambient

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/istiod/config"
)

// labelBlock renders a YAML labels/annotations map at the given indent.
func labelBlock(key string, m map[string]string, indent string) string {
	if len(m) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s%s:\n", indent, key)
	for _, k := range config.SortedKeys(m) {
		fmt.Fprintf(&b, "%s  %s: %q\n", indent, k, m[k])
	}
	return b.String()
}

func nsYAML(name string, labels map[string]string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n%s", name, labelBlock("labels", labels, "  "))
}

func podYAML(ns, name string, labels, annotations map[string]string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
%s%sspec:
  nodeName: node-1
  serviceAccountName: sa-%s
  containers:
  - name: app
    image: app
    ports:
    - name: http-web
      containerPort: 8080
    - name: metrics
      containerPort: 9090
      protocol: UDP
status:
  phase: Running
  podIP: 10.0.0.1
  conditions:
  - type: Ready
    status: "True"
`, name, ns, labelBlock("labels", labels, "  "), labelBlock("annotations", annotations, "  "), name)
}

func buildPod(t *testing.T, opts Options, docs ...string) *workloadapi.Workload {
	t.Helper()
	s := snapshot(t, docs...)
	if len(s.Pods) != 1 {
		t.Fatalf("fixture has %d pods, want 1", len(s.Pods))
	}
	idx := NewIndex(s)
	for _, p := range s.Pods {
		return BuildWorkload(p, idx.Namespace(p.Namespace), idx, opts)
	}
	return nil
}

func TestWorkloadTunnelByEnrollmentLabels(t *testing.T) {
	amb := map[string]string{"istio.io/dataplane-mode": "ambient"}
	none := map[string]string{"istio.io/dataplane-mode": "none"}
	redirected := map[string]string{AnnotationRedirection: "enabled"}
	native := map[string]string{LabelTunnel: "http"}
	for _, tc := range []struct {
		name            string
		nsLabels, pod   map[string]string
		ann             map[string]string
		mode            TunnelMode
		wantHBONE, want bool // want: native tunnel
	}{
		{"neither, by enrollment", nil, nil, nil, TunnelByEnrollment, false, false},
		{"namespace ambient, by enrollment", amb, nil, nil, TunnelByEnrollment, true, false},
		{"pod ambient, by enrollment", nil, amb, nil, TunnelByEnrollment, true, false},
		{"pod none in ambient namespace, by enrollment", amb, none, nil, TunnelByEnrollment, false, false},
		{"namespace ambient without annotation, Istio rule", amb, nil, nil, TunnelByAnnotation, false, false},
		{"pod ambient without annotation, Istio rule", nil, amb, nil, TunnelByAnnotation, false, false},
		{"annotation redirection enabled, Istio rule", amb, nil, redirected, TunnelByAnnotation, true, false},
		{"annotation other value, Istio rule", amb, nil, map[string]string{AnnotationRedirection: "disabled"}, TunnelByAnnotation, false, false},
		{"annotation ignored by enrollment rule", nil, nil, redirected, TunnelByEnrollment, false, false},
		{"native tunnel label", nil, native, nil, TunnelByAnnotation, true, true},
		{"native tunnel in a list", nil, map[string]string{LabelTunnel: "tcp,http"}, nil, TunnelByEnrollment, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := buildPod(t, Options{Tunnel: tc.mode}, nsYAML("ns1", tc.nsLabels), podYAML("ns1", "p", tc.pod, tc.ann))
			if w == nil {
				t.Fatal("no workload")
			}
			if got := w.TunnelProtocol == workloadapi.TunnelProtocol_HBONE; got != tc.wantHBONE {
				t.Errorf("HBONE = %v, want %v", got, tc.wantHBONE)
			}
			if w.NativeTunnel != tc.want {
				t.Errorf("native_tunnel = %v, want %v", w.NativeTunnel, tc.want)
			}
		})
	}
}

func TestWorkloadFields(t *testing.T) {
	w := buildPod(t, Options{}, nsYAML("ns1", nil), podYAML("ns1", "p", map[string]string{"app": "shop", "version": "v2"}, nil))
	if w.Uid != "Kubernetes//Pod/ns1/p" || w.Name != "p" || w.Namespace != "ns1" || w.ClusterId != "Kubernetes" {
		t.Errorf("identity fields: %v", w)
	}
	if w.ServiceAccount != "sa-p" || w.Node != "node-1" || w.TrustDomain != "" || w.Network != "" {
		t.Errorf("sa/node/td/network: %v", w)
	}
	if w.CanonicalName != "shop" || w.CanonicalRevision != "v2" || w.WorkloadName != "p" || w.WorkloadType != workloadapi.WorkloadType_POD {
		t.Errorf("canonical: %v", w)
	}
	if w.Status != workloadapi.WorkloadStatus_HEALTHY || w.NetworkMode != workloadapi.NetworkMode_STANDARD {
		t.Errorf("status/mode: %v", w)
	}
	if len(w.Addresses) != 1 || netip.AddrFrom4([4]byte{10, 0, 0, 1}) != mustAddr(t, w.Addresses[0]) {
		t.Errorf("addresses: %v", w.Addresses)
	}

	w = buildPod(t, Options{TrustDomain: "example.org", ClusterID: "c1", Network: "n1"}, podYAML("ns1", "p", nil, nil))
	if w.TrustDomain != "example.org" || w.Uid != "c1//Pod/ns1/p" || w.Network != "n1" || w.CanonicalName != "p" || w.CanonicalRevision != "latest" {
		t.Errorf("options: %v", w)
	}
}

func mustAddr(t *testing.T, b []byte) netip.Addr {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		t.Fatalf("bad address %x", b)
	}
	return a
}

func TestWorkloadPodStates(t *testing.T) {
	base := podYAML("ns1", "p", nil, nil)
	for _, tc := range []struct {
		name   string
		edit   func(string) string
		nilW   bool
		status workloadapi.WorkloadStatus
		check  func(*testing.T, *workloadapi.Workload)
	}{
		{name: "running ready", edit: func(s string) string { return s }, status: workloadapi.WorkloadStatus_HEALTHY},
		{name: "not ready", edit: func(s string) string { return strings.Replace(s, `status: "True"`, `status: "False"`, 1) }, status: workloadapi.WorkloadStatus_UNHEALTHY},
		{name: "no ready condition", edit: func(s string) string {
			return strings.Replace(s, "  conditions:\n  - type: Ready\n    status: \"True\"\n", "", 1)
		}, status: workloadapi.WorkloadStatus_UNHEALTHY},
		{name: "being deleted", edit: func(s string) string {
			return strings.Replace(s, "  namespace: ns1\n", "  namespace: ns1\n  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n", 1)
		}, status: workloadapi.WorkloadStatus_UNHEALTHY},
		{name: "pending with IP", edit: func(s string) string { return strings.Replace(s, "phase: Running", "phase: Pending", 1) }, status: workloadapi.WorkloadStatus_HEALTHY},
		{name: "succeeded", edit: func(s string) string { return strings.Replace(s, "phase: Running", "phase: Succeeded", 1) }, nilW: true},
		{name: "failed", edit: func(s string) string { return strings.Replace(s, "phase: Running", "phase: Failed", 1) }, nilW: true},
		{name: "no IP yet", edit: func(s string) string { return strings.Replace(s, "  podIP: 10.0.0.1\n", "", 1) }, nilW: true},
		{name: "dual stack", edit: func(s string) string {
			return strings.Replace(s, "  podIP: 10.0.0.1\n", "  podIP: 10.0.0.1\n  podIPs:\n  - ip: 10.0.0.1\n  - ip: fd00::1\n", 1)
		}, status: workloadapi.WorkloadStatus_HEALTHY, check: func(t *testing.T, w *workloadapi.Workload) {
			if len(w.Addresses) != 2 || mustAddr(t, w.Addresses[1]) != netip.MustParseAddr("fd00::1") || len(w.Addresses[0]) != 4 {
				t.Errorf("addresses %x", w.Addresses)
			}
		}},
		{name: "host network", edit: func(s string) string {
			return strings.Replace(s, "  nodeName: node-1\n", "  nodeName: node-1\n  hostNetwork: true\n", 1)
		}, status: workloadapi.WorkloadStatus_HEALTHY, check: func(t *testing.T, w *workloadapi.Workload) {
			if w.NetworkMode != workloadapi.NetworkMode_HOST_NETWORK {
				t.Errorf("network_mode %v", w.NetworkMode)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := buildPod(t, Options{}, tc.edit(base))
			if tc.nilW {
				if w != nil {
					t.Fatalf("got a workload, want none: %v", w)
				}
				return
			}
			if w == nil {
				t.Fatal("no workload")
			}
			if w.Status != tc.status {
				t.Errorf("status %v, want %v", w.Status, tc.status)
			}
			if tc.check != nil {
				tc.check(t, w)
			}
		})
	}
}

func TestWorkloadName(t *testing.T) {
	owned := func(kind, owner string, labels map[string]string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: x-abcde
  namespace: ns1
  generateName: x-
%s  ownerReferences:
  - apiVersion: apps/v1
    kind: %s
    name: %s
    uid: "1"
    controller: true
status:
  podIP: 10.0.0.9
`, labelBlock("labels", labels, "  "), kind, owner)
	}
	for _, tc := range []struct{ name, doc, want, canonical string }{
		{"deployment", owned("ReplicaSet", "shop-5d8f", map[string]string{"pod-template-hash": "5d8f"}), "shop", "shop"},
		{"replicaset without hash", owned("ReplicaSet", "shop-5d8f", nil), "shop-5d8f", "shop-5d8f"},
		{"argo rollout", owned("ReplicaSet", "r-77", map[string]string{"rollouts-pod-template-hash": "77"}), "r", "r"},
		{"cronjob", owned("Job", "nightly-28000000", nil), "nightly", "nightly"},
		{"plain job", owned("Job", "once", nil), "once", "once"},
		{"statefulset", owned("StatefulSet", "db", nil), "db", "db"},
		{"label override", owned("StatefulSet", "db", map[string]string{LabelWorkloadName: "custom"}), "custom", "custom"},
		{"canonical label wins", owned("StatefulSet", "db", map[string]string{"service.istio.io/canonical-name": "c", "app": "a"}), "db", "c"},
		{"app.kubernetes.io/name before app", owned("StatefulSet", "db", map[string]string{"app.kubernetes.io/name": "k", "app": "a"}), "db", "k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := buildPod(t, Options{}, tc.doc)
			if w.WorkloadName != tc.want || w.CanonicalName != tc.canonical {
				t.Errorf("workload_name %q canonical %q, want %q %q", w.WorkloadName, w.CanonicalName, tc.want, tc.canonical)
			}
		})
	}
}

func svcYAML(ns, name string, selector map[string]string, extra string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %s
  namespace: %s
spec:
%s  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
    targetPort: http-web
  - name: tcp-raw
    port: 81
    targetPort: 8081
  - name: grpc-missing
    port: 82
    targetPort: nope
  - name: metrics
    port: 9090
    targetPort: metrics
%s`, name, ns, labelBlock("selector", selector, "  "), extra)
}

func TestWorkloadServices(t *testing.T) {
	app := map[string]string{"app": "shop"}
	w := buildPod(t, Options{},
		podYAML("ns1", "p", app, nil),
		svcYAML("ns1", "shop", app, ""),
		svcYAML("ns1", "other", map[string]string{"app": "other"}, ""),
		svcYAML("ns1", "noselector", nil, ""),
		svcYAML("ns2", "shop", app, ""),
		svcYAML("ns1", "ext", app, "  type: ExternalName\n  externalName: example.com\n"),
		strings.Replace(svcYAML("ns1", "headless", app, ""), "clusterIP: 10.96.0.10", "clusterIP: None", 1),
	)
	keys := config.SortedKeys(w.Services)
	want := []string{"ns1/headless.ns1.svc.cluster.local", "ns1/shop.ns1.svc.cluster.local"}
	if !slices.Equal(keys, want) {
		t.Fatalf("services %v, want %v", keys, want)
	}
	var got []string
	for _, p := range w.Services["ns1/shop.ns1.svc.cluster.local"].Ports {
		got = append(got, fmt.Sprintf("%d->%d", p.ServicePort, p.TargetPort))
	}
	// http-web resolves to 8080; "nope" is absent (port left out);
	// "metrics" is a UDP container port, so it does not resolve either.
	if want := []string{"80->8080", "81->8081"}; !slices.Equal(got, want) {
		t.Errorf("ports %v, want %v", got, want)
	}
}

func TestWaypoints(t *testing.T) {
	wp := func(ns, name, trafficType string) string {
		labels := map[string]string{LabelGatewayManaged: managedMeshController}
		if trafficType != "" {
			labels[LabelWaypointFor] = trafficType
		}
		return fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: %s\n%sspec:\n  clusterIP: 10.96.9.9\n  ports:\n  - name: mesh\n    port: 15008\n",
			name, ns, labelBlock("labels", labels, "  "))
	}
	use := func(name string) map[string]string { return map[string]string{LabelUseWaypoint: name} }
	app := map[string]string{"app": "shop"}
	svc := func(labels map[string]string) string {
		s := svcYAML("ns1", "shop", app, "")
		return strings.Replace(s, "  namespace: ns1\n", "  namespace: ns1\n"+labelBlock("labels", labels, "  "), 1)
	}
	merge := func(ms ...map[string]string) map[string]string {
		out := map[string]string{}
		for _, m := range ms {
			for k, v := range m {
				out[k] = v
			}
		}
		return out
	}
	const wpHost = "wp.ns1.svc.cluster.local"
	for _, tc := range []struct {
		name            string
		docs            []string
		wantWorkload    string // hostname or ""
		wantService     string
		wantIngressFlag bool
	}{
		{"namespace label, service waypoint", []string{nsYAML("ns1", use("wp")), wp("ns1", "wp", ""), podYAML("ns1", "p", app, nil), svc(nil)}, "", wpHost, false},
		{"namespace label, workload waypoint", []string{nsYAML("ns1", use("wp")), wp("ns1", "wp", "workload"), podYAML("ns1", "p", app, nil), svc(nil)}, wpHost, "", false},
		{"namespace label, all", []string{nsYAML("ns1", use("wp")), wp("ns1", "wp", "all"), podYAML("ns1", "p", app, nil), svc(nil)}, wpHost, wpHost, false},
		{"pod label", []string{nsYAML("ns1", nil), wp("ns1", "wp", "all"), podYAML("ns1", "p", merge(app, use("wp")), nil), svc(nil)}, wpHost, "", false},
		{"service label with ingress", []string{nsYAML("ns1", nil), wp("ns1", "wp", ""), podYAML("ns1", "p", app, nil), svc(merge(use("wp"), map[string]string{LabelIngressUseWaypoint: "true"}))}, "", wpHost, true},
		{"pod and service opt out with none", []string{nsYAML("ns1", use("wp")), wp("ns1", "wp", "all"), podYAML("ns1", "p", merge(app, use("none")), nil), svc(use("none"))}, "", "", false},
		{"waypoint service missing", []string{nsYAML("ns1", use("wp")), podYAML("ns1", "p", app, nil), svc(nil)}, "", "", false},
		{"other namespace", []string{nsYAML("ns1", merge(use("wp"), map[string]string{LabelUseWaypointNamespace: "infra"})), wp("infra", "wp", "all"), podYAML("ns1", "p", app, nil), svc(nil)}, "wp.infra.svc.cluster.local", "wp.infra.svc.cluster.local", false},
		{"traffic type none", []string{nsYAML("ns1", use("wp")), wp("ns1", "wp", "none"), podYAML("ns1", "p", app, nil), svc(nil)}, "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, errs := Build(snapshot(t, tc.docs...), Options{})
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			w := r.Workloads["Kubernetes//Pod/ns1/p"]
			s := r.Services["ns1/shop.ns1.svc.cluster.local"]
			if w == nil || s == nil {
				t.Fatalf("missing workload or service: %v", r)
			}
			if got := w.GetWaypoint().GetHostname().GetHostname(); got != tc.wantWorkload {
				t.Errorf("workload waypoint %q, want %q", got, tc.wantWorkload)
			}
			if got := s.GetWaypoint().GetHostname().GetHostname(); got != tc.wantService {
				t.Errorf("service waypoint %q, want %q", got, tc.wantService)
			}
			if s.Waypoint != nil && s.Waypoint.HboneMtlsPort != HBONEPort {
				t.Errorf("waypoint port %d", s.Waypoint.HboneMtlsPort)
			}
			if s.IngressUseWaypoint != tc.wantIngressFlag {
				t.Errorf("ingress_use_waypoint %v", s.IngressUseWaypoint)
			}
			// The waypoint's own Service never has a waypoint.
			for k, ws := range r.Services {
				if strings.HasPrefix(ws.Name, "wp") && ws.Waypoint != nil {
					t.Errorf("waypoint service %s has a waypoint", k)
				}
			}
		})
	}
}
