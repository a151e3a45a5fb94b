package ambient

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	apisecurityv1 "istio.io/api/security/v1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambit-mesh/ambit/istiod/config"
)

// mutable is a small cluster whose objects a test replaces one at a time,
// as a config source does (new pointer for a changed object, new maps per
// snapshot).
type mutable struct {
	rng *rand.Rand
	s   *config.Snapshot
}

var (
	mutNamespaces = []string{"a", "b", "infra", DefaultRootNamespace}
	mutApps       = []string{"web", "db", "wp"}
)

func (m *mutable) pick(list []string) string { return list[m.rng.IntN(len(list))] }

func (m *mutable) labels() map[string]string {
	l := map[string]string{"app": m.pick(mutApps)}
	switch m.rng.IntN(6) {
	case 0:
		l[LabelUseWaypoint] = "wp"
	case 1:
		l[LabelUseWaypoint] = "wp"
		l[LabelUseWaypointNamespace] = m.pick(mutNamespaces)
	case 2:
		l[LabelUseWaypoint] = "none"
	}
	return l
}

func (m *mutable) namespace(name string) *corev1.Namespace {
	l := m.labels()
	delete(l, "app")
	l["istio.io/dataplane-mode"] = "ambient"
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
}

func (m *mutable) pod(ns string, i int) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p%d", i), Labels: m.labels()},
		Spec: corev1.PodSpec{ServiceAccountName: "sa", NodeName: "n1",
			Containers: []corev1.Container{{Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(8000 + m.rng.IntN(3))}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.0.%d.%d", slices.Index(mutNamespaces, ns), i+1),
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	if m.rng.IntN(8) == 0 {
		p.Status.PodIP = "bad"
	}
	return p
}

func (m *mutable) service(ns, app string) *corev1.Service {
	l := map[string]string{}
	if app == "wp" {
		l[LabelWaypointFor] = []string{"service", "workload", "all"}[m.rng.IntN(3)]
	} else {
		l = m.labels()
		delete(l, "app")
	}
	ip := fmt.Sprintf("10.96.%d.%d", slices.Index(mutNamespaces, ns), slices.Index(mutApps, app)+1)
	if m.rng.IntN(8) == 0 {
		ip = "bad"
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app, Labels: l},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": app}, ClusterIP: ip,
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromString("http")}}},
	}
}

func (m *mutable) authz(ns string, i int) *securityv1.AuthorizationPolicy {
	ap := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("ap%d", i)}}
	if m.rng.IntN(3) > 0 {
		ap.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": m.pick(mutApps)}}
	}
	ap.Spec.Rules = []*apisecurityv1.Rule{{From: []*apisecurityv1.Rule_From{{Source: &apisecurityv1.Source{Namespaces: []string{m.pick(mutNamespaces)}}}}}}
	if m.rng.IntN(4) == 0 {
		ap.Spec.Rules[0].To = []*apisecurityv1.Rule_To{{Operation: &apisecurityv1.Operation{Paths: []string{"/x"}}}}
	}
	return ap
}

func (m *mutable) peerAuth(ns string, i int) *securityv1.PeerAuthentication {
	modes := []apisecurityv1.PeerAuthentication_MutualTLS_Mode{
		apisecurityv1.PeerAuthentication_MutualTLS_STRICT, apisecurityv1.PeerAuthentication_MutualTLS_PERMISSIVE, apisecurityv1.PeerAuthentication_MutualTLS_UNSET}
	pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pa%d", i),
		CreationTimestamp: metav1.NewTime(time.Unix(int64(m.rng.IntN(3)), 0))}}
	pa.Spec.Mtls = &apisecurityv1.PeerAuthentication_MutualTLS{Mode: modes[m.rng.IntN(3)]}
	if m.rng.IntN(2) == 0 {
		pa.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": m.pick(mutApps)}}
		pa.Spec.PortLevelMtls = map[uint32]*apisecurityv1.PeerAuthentication_MutualTLS{8000: {Mode: modes[m.rng.IntN(3)]}}
	}
	return pa
}

// step replaces, adds or removes one object in a copy of the snapshot.
func (m *mutable) step() {
	s := *m.s
	ns := m.pick(mutNamespaces)
	i := m.rng.IntN(4)
	del := m.rng.IntN(4) == 0
	switch m.rng.IntN(6) {
	case 0:
		s.Namespaces = maps.Clone(s.Namespaces)
		s.Namespaces[ns] = m.namespace(ns)
	case 1, 2:
		s.Pods = maps.Clone(s.Pods)
		if k := config.Key(ns, fmt.Sprintf("p%d", i)); del {
			delete(s.Pods, k)
		} else {
			s.Pods[k] = m.pod(ns, i)
		}
	case 3:
		s.Services = maps.Clone(s.Services)
		app := m.pick(mutApps)
		if k := config.Key(ns, app); del {
			delete(s.Services, k)
		} else {
			s.Services[k] = m.service(ns, app)
		}
	case 4:
		s.AuthorizationPolicies = maps.Clone(s.AuthorizationPolicies)
		if k := config.Key(ns, fmt.Sprintf("ap%d", i)); del {
			delete(s.AuthorizationPolicies, k)
		} else {
			s.AuthorizationPolicies[k] = m.authz(ns, i)
		}
	case 5:
		s.PeerAuthentications = maps.Clone(s.PeerAuthentications)
		if k := config.Key(ns, fmt.Sprintf("pa%d", i)); del {
			delete(s.PeerAuthentications, k)
		} else {
			s.PeerAuthentications[k] = m.peerAuth(ns, i)
		}
	}
	m.s = &s
}

func sameResources[T proto.Message](t *testing.T, what string, got, want map[string]T) {
	t.Helper()
	for k, w := range want {
		g, ok := got[k]
		if !ok || !proto.Equal(g, w) {
			t.Fatalf("%s %s: incremental build differs from a full build:\n got %v\nwant %v", what, k, g, w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Fatalf("%s %s: only in the incremental build", what, k)
		}
	}
}

// TestBuilderMatchesBuild: after every one of many random changes, a
// Builder's incremental result equals a fresh Build of the same snapshot,
// errors included.
func TestBuilderMatchesBuild(t *testing.T) {
	for seed := range uint64(20) {
		m := &mutable{rng: rand.New(rand.NewPCG(seed, 1)), s: config.NewSnapshot()}
		b := NewBuilder()
		for step := range 300 {
			m.step()
			opts := Options{AuditPolicies: true}
			if step%97 == 96 {
				opts.Tunnel = TunnelByEnrollment // an Options change rebuilds all
			}
			got, gotErrs := b.Build(m.s, opts)
			want, wantErrs := Build(m.s, opts)
			sameResources(t, "workload", got.Workloads, want.Workloads)
			sameResources(t, "service", got.Services, want.Services)
			sameResources(t, "authorization", got.Authorizations, want.Authorizations)
			sameResources(t, "address", got.Addresses(), want.Addresses())
			if fmt.Sprint(gotErrs) != fmt.Sprint(wantErrs) {
				t.Fatalf("seed %d step %d: errors %v, want %v", seed, step, gotErrs, wantErrs)
			}
		}
	}
}

// TestBuilderReusesUnchanged: after one pod changes, every other resource
// (and its Address wrapper) is the previous pointer.
func TestBuilderReusesUnchanged(t *testing.T) {
	m := &mutable{rng: rand.New(rand.NewPCG(7, 7)), s: config.NewSnapshot()}
	s := m.s
	for _, ns := range mutNamespaces {
		s.Namespaces[ns] = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
		for i := range 3 {
			p := m.pod(ns, i)
			p.Status.PodIP = fmt.Sprintf("10.0.%d.%d", slices.Index(mutNamespaces, ns), i+1)
			s.Pods[config.Key(ns, p.Name)] = p
		}
		svc := m.service(ns, "web")
		svc.Spec.ClusterIP = fmt.Sprintf("10.96.%d.1", slices.Index(mutNamespaces, ns))
		s.Services[config.Key(ns, "web")] = svc
		s.AuthorizationPolicies[config.Key(ns, "ap0")] = m.authz(ns, 0)
	}
	b := NewBuilder()
	r1, _ := b.Build(s, Options{})
	a1 := r1.Addresses()

	next := *s
	next.Pods = maps.Clone(s.Pods)
	changed := s.Pods["a/p1"].DeepCopy()
	changed.Labels["extra"] = "x"
	changed.Status.Conditions[0].Status = corev1.ConditionFalse
	next.Pods["a/p1"] = changed
	r2, _ := b.Build(&next, Options{})
	a2 := r2.Addresses()

	changedUID := PodUID(DefaultClusterID, "a", "p1")
	if r2.Workloads[changedUID] == r1.Workloads[changedUID] {
		t.Error("the changed pod's workload is the previous pointer")
	}
	for k, w := range r2.Workloads {
		if k != changedUID && w != r1.Workloads[k] {
			t.Errorf("workload %s was rebuilt", k)
		}
	}
	for k, v := range r2.Services {
		if v != r1.Services[k] {
			t.Errorf("service %s was rebuilt", k)
		}
	}
	for k, v := range r2.Authorizations {
		if v != r1.Authorizations[k] {
			t.Errorf("authorization %s was rebuilt", k)
		}
	}
	for k, v := range a2 {
		if (k == changedUID) == (v == a1[k]) {
			t.Errorf("address %s: reused %v", k, v == a1[k])
		}
	}

	// A label change that leaves the workload equal keeps its pointer too.
	again := next
	again.Pods = maps.Clone(next.Pods)
	same := changed.DeepCopy()
	same.Labels["extra"] = "y"
	again.Pods["a/p1"] = same
	r3, _ := b.Build(&again, Options{})
	if r3.Workloads[changedUID] != r2.Workloads[changedUID] {
		t.Error("an equal rebuilt workload is not the previous pointer")
	}
}
