package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"testing"

	apisecurityv1 "istio.io/api/security/v1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambit-mesh/ambit/istiod/ambient"
	"github.com/ambit-mesh/ambit/istiod/config"
	"github.com/ambit-mesh/ambit/istiod/xds"
)

// Benchmark scale: what e2e/kube/cpbench runs by default.
const (
	benchPods       = 10000
	benchServices   = 1000
	benchNamespaces = 10
)

// benchSnapshot builds cpbench's cluster shape in memory: namespaces
// enrolled in ambient, service j in namespace j%ns selecting app=svc-j, pods
// dealt round robin over their namespace's services, and a workload-selector
// AuthorizationPolicy plus a namespace-wide STRICT PeerAuthentication per
// namespace.
func benchSnapshot() *config.Snapshot {
	s := config.NewSnapshot()
	ns := func(k int) string { return fmt.Sprintf("bench-%d", k) }
	for k := range benchNamespaces {
		s.Namespaces[ns(k)] = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns(k),
			Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}}
		s.AuthorizationPolicies[config.Key(ns(k), "allow")] = &securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns(k), Name: "allow"},
			Spec: apisecurityv1.AuthorizationPolicy{
				Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("svc-%04d", k)}},
				Rules:    []*apisecurityv1.Rule{{From: []*apisecurityv1.Rule_From{{Source: &apisecurityv1.Source{Namespaces: []string{ns(k)}}}}}},
			}}
		s.PeerAuthentications[config.Key(ns(k), "strict")] = &securityv1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns(k), Name: "strict"},
			Spec:       apisecurityv1.PeerAuthentication{Mtls: &apisecurityv1.PeerAuthentication_MutualTLS{Mode: apisecurityv1.PeerAuthentication_MutualTLS_STRICT}}}
	}
	svcBase := netip.MustParseAddr("10.96.0.0").As4()
	for j := range benchServices {
		name := fmt.Sprintf("svc-%04d", j)
		ip := svcBase
		ip[2], ip[3] = byte((j+1)>>8), byte(j+1)
		s.Services[config.Key(ns(j%benchNamespaces), name)] = &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns(j % benchNamespaces), Name: name},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
				ClusterIP: netip.AddrFrom4(ip).String(), ClusterIPs: []string{netip.AddrFrom4(ip).String()},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}
	}
	for i := range benchPods {
		s.Pods[config.Key(ns(i%benchNamespaces), fmt.Sprintf("pod-%05d", i))] = benchPod(i, "")
	}
	return s
}

// benchPod is pod i; extra, if set, is an extra label value (a change).
func benchPod(i int, extra string) *corev1.Pod {
	k := i % benchNamespaces
	svc := k + benchNamespaces*((i/benchNamespaces)%(benchServices/benchNamespaces))
	ip := netip.MustParseAddr("10.200.0.0").As4()
	n := i + 1
	ip[1], ip[2], ip[3] = byte(200+n>>16), byte(n>>8), byte(n)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("bench-%d", k), Name: fmt.Sprintf("pod-%05d", i),
			Labels:      map[string]string{"app": fmt.Sprintf("svc-%04d", svc)},
			Annotations: map[string]string{ambient.AnnotationRedirection: "enabled"}},
		Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%50), ServiceAccountName: "default"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: netip.AddrFrom4(ip).String(),
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	if extra != "" {
		p.Labels["bench"] = extra
	}
	return p
}

// withPod returns a copy of s (new maps, shared objects, as a config
// source publishes) with pod i replaced by a changed copy.
func withPod(s *config.Snapshot, i, change int) *config.Snapshot {
	out := *s
	out.Pods = make(map[string]*corev1.Pod, len(s.Pods))
	for k, v := range s.Pods {
		out.Pods[k] = v
	}
	p := benchPod(i, fmt.Sprint(change))
	out.Pods[config.Key(p.Namespace, p.Name)] = p
	return &out
}

func benchXDS(b *testing.B) *xds.Server {
	x, err := xds.New(xds.Options{Debounce: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	return x
}

// BenchmarkBuild: ambient.Build of the whole snapshot.
func BenchmarkBuild(b *testing.B) {
	s := benchSnapshot()
	for b.Loop() {
		ambient.Build(s, ambient.Options{})
	}
}

// BenchmarkSetNewPointers: xds Set of the whole state, every resource a
// new pointer (encoded and hashed again).
func BenchmarkSetNewPointers(b *testing.B) {
	s := benchSnapshot()
	res, _ := ambient.Build(s, ambient.Options{})
	x := benchXDS(b)
	x.Set(xds.Resources{Addresses: res.Addresses(), Authorizations: res.Authorizations})
	for b.Loop() {
		b.StopTimer()
		res, _ := ambient.Build(s, ambient.Options{})
		b.StartTimer()
		x.Set(xds.Resources{Addresses: res.Addresses(), Authorizations: res.Authorizations})
	}
}

// BenchmarkSetSamePointers: xds Set of the same messages again.
func BenchmarkSetSamePointers(b *testing.B) {
	s := benchSnapshot()
	res, _ := ambient.Build(s, ambient.Options{})
	r := xds.Resources{Addresses: res.Addresses(), Authorizations: res.Authorizations}
	x := benchXDS(b)
	x.Set(r)
	for b.Loop() {
		x.Set(xds.Resources{Addresses: r.Addresses, Authorizations: r.Authorizations})
	}
}

// BenchmarkPushOneChange: what pushLoop does for a snapshot that differs
// from the previous one in one pod.
func BenchmarkPushOneChange(b *testing.B) {
	s := benchSnapshot()
	x := benchXDS(b)
	p := newPusher(ambient.Options{}, x)
	p.push(s)
	i := 0
	for b.Loop() {
		b.StopTimer()
		i++
		next := withPod(s, i%benchPods, i)
		b.StartTimer()
		p.push(next)
	}
}
