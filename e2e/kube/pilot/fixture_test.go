package pilot_test

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/pilot"
)

// The fixture: two namespaces, one enrolled in ambient; pods whose status
// the test writes (no kubelet runs), captured or not, Ready or not, one opted
// out, one on the host network and one without an IP; services with named,
// numeric and app-protocol ports, and a headless one; AuthorizationPolicies
// of every action and match kind ztunnel enforces, one with HTTP attributes;
// STRICT PeerAuthentication with a port-level exception.
const (
	nsAmbient = "fx-ambient"
	nsPlain   = "fx-plain"
	nodeA     = "fx-node-a"
	nodeB     = "fx-node-b"
)

type fixturePod struct {
	ns, name, sa, node string
	labels, annot      map[string]string
	ip                 string // "" leaves the pod Pending without an IP
	ready              bool
	hostNetwork        bool
}

var fixturePods = []fixturePod{
	{ns: nsAmbient, name: "server-1", sa: "server", node: nodeA, ip: "10.244.1.10", ready: true,
		labels: map[string]string{"app": "server", "version": "v1"},
		annot:  map[string]string{"ambient.istio.io/redirection": "enabled"}},
	// Enrolled by its namespace, but the node agent has not annotated it
	// yet: still plaintext (TCP), and not Ready.
	{ns: nsAmbient, name: "server-2", sa: "server", node: nodeB, ip: "10.244.2.10", ready: false,
		labels: map[string]string{"app": "server", "version": "v2"}},
	{ns: nsAmbient, name: "client-1", sa: "client", node: nodeA, ip: "10.244.1.11", ready: true,
		labels: map[string]string{"app": "client", "service.istio.io/canonical-name": "client-app",
			"service.istio.io/canonical-revision": "r7"},
		annot: map[string]string{"ambient.istio.io/redirection": "enabled"}},
	{ns: nsAmbient, name: "optout", sa: "default", node: nodeB, ip: "10.244.2.11", ready: true,
		labels: map[string]string{"app": "optout", "istio.io/dataplane-mode": "none"}},
	{ns: nsAmbient, name: "pending", sa: "default", node: nodeB,
		labels: map[string]string{"app": "server"}},
	{ns: nsPlain, name: "legacy-1", sa: "default", node: nodeB, ip: "10.244.2.20", ready: true,
		labels: map[string]string{"app": "legacy", "app.kubernetes.io/version": "1.2"}},
	{ns: nsPlain, name: "hostnet", sa: "default", node: nodeA, ip: "172.18.0.10", ready: true,
		labels: map[string]string{"app": "hostnet"}, hostNetwork: true},
}

func (p fixturePod) object() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: p.ns, Labels: p.labels, Annotations: p.annot},
		Spec: corev1.PodSpec{
			ServiceAccountName: p.sa,
			NodeName:           p.node,
			HostNetwork:        p.hostNetwork,
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "registry.invalid/app:1",
				Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
					{Name: "grpc", ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
				},
			}},
		},
	}
}

// status is what a kubelet would write: Running with the pod IP, Ready or
// not.
func (p fixturePod) status() corev1.PodStatus {
	if p.ip == "" {
		return corev1.PodStatus{Phase: corev1.PodPending}
	}
	ready := corev1.ConditionFalse
	if p.ready {
		ready = corev1.ConditionTrue
	}
	now := metav1.Now()
	return corev1.PodStatus{
		Phase:  corev1.PodRunning,
		PodIP:  p.ip,
		PodIPs: []corev1.PodIP{{IP: p.ip}},
		HostIP: "172.18.0.10",
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: ready, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: ready, LastTransitionTime: now},
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		StartTime: &now,
	}
}

func tcpPort(name string, port int32, target intstr.IntOrString, appProtocol string) corev1.ServicePort {
	sp := corev1.ServicePort{Name: name, Port: port, TargetPort: target, Protocol: corev1.ProtocolTCP}
	if appProtocol != "" {
		sp.AppProtocol = &appProtocol
	}
	return sp
}

var fixtureServices = []*corev1.Service{
	{
		ObjectMeta: metav1.ObjectMeta{Name: "server", Namespace: nsAmbient},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "server"},
			Ports: []corev1.ServicePort{
				tcpPort("http", 80, intstr.FromString("http"), ""),
				tcpPort("grpc", 9090, intstr.FromInt32(9090), "grpc"),
			},
		},
	},
	{
		ObjectMeta: metav1.ObjectMeta{Name: "server-headless", Namespace: nsAmbient},
		Spec: corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone,
			Selector:  map[string]string{"app": "server"},
			Ports:     []corev1.ServicePort{tcpPort("http", 8080, intstr.FromInt32(8080), "")},
		},
	},
	{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: nsAmbient},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "client"},
			Ports:    []corev1.ServicePort{tcpPort("tcp-client", 7070, intstr.FromInt32(7070), "")},
		},
	},
	{
		ObjectMeta: metav1.ObjectMeta{Name: "legacy", Namespace: nsPlain},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "legacy"},
			Ports:    []corev1.ServicePort{tcpPort("http-web", 80, intstr.FromString("http"), "http")},
		},
	},
}

func selector(kv ...string) *typeapi.WorkloadSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &typeapi.WorkloadSelector{MatchLabels: m}
}

func authz(ns, name string, spec *securityapi.AuthorizationPolicy) *securityv1.AuthorizationPolicy {
	p := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	proto.Merge(&p.Spec, spec)
	return p
}

func fixturePolicies() []*securityv1.AuthorizationPolicy {
	return []*securityv1.AuthorizationPolicy{
		authz(nsAmbient, "allow-client", &securityapi.AuthorizationPolicy{
			Selector: selector("app", "server"),
			Action:   securityapi.AuthorizationPolicy_ALLOW,
			Rules: []*securityapi.Rule{{
				From: []*securityapi.Rule_From{{Source: &securityapi.Source{
					Principals: []string{"cluster.local/ns/fx-ambient/sa/client"},
				}}},
				To: []*securityapi.Rule_To{{Operation: &securityapi.Operation{Ports: []string{"8080"}}}},
			}},
		}),
		authz(nsAmbient, "allow-ipblock", &securityapi.AuthorizationPolicy{
			Selector: selector("app", "server"),
			Action:   securityapi.AuthorizationPolicy_ALLOW,
			Rules: []*securityapi.Rule{{
				From: []*securityapi.Rule_From{{Source: &securityapi.Source{
					IpBlocks:    []string{"10.244.0.0/16", "192.168.7.7"},
					NotIpBlocks: []string{"10.244.9.0/24"},
				}}},
				To: []*securityapi.Rule_To{{Operation: &securityapi.Operation{NotPorts: []string{"9090"}}}},
			}},
		}),
		authz(nsAmbient, "deny-plain-ns", &securityapi.AuthorizationPolicy{
			Action: securityapi.AuthorizationPolicy_DENY,
			Rules: []*securityapi.Rule{{
				From: []*securityapi.Rule_From{{Source: &securityapi.Source{
					Namespaces:    []string{nsPlain},
					NotPrincipals: []string{"cluster.local/ns/fx-plain/sa/trusted"},
				}}},
			}},
		}),
		authz(nsAmbient, "allow-sa-prefix", &securityapi.AuthorizationPolicy{
			Selector: selector("app", "client"),
			Action:   securityapi.AuthorizationPolicy_ALLOW,
			Rules: []*securityapi.Rule{
				{From: []*securityapi.Rule_From{{Source: &securityapi.Source{
					Principals: []string{"cluster.local/ns/fx-ambient/*", "*/sa/admin"},
				}}}},
				{When: []*securityapi.Condition{
					{Key: "source.ip", Values: []string{"10.244.1.0/24"}},
					{Key: "destination.port", Values: []string{"7070"}, NotValues: []string{"7071"}},
				}},
			},
		}),
		// HTTP attributes in an ALLOW rule: ztunnel can't check them, so the
		// rule can never allow.
		authz(nsAmbient, "allow-http", &securityapi.AuthorizationPolicy{
			Selector: selector("app", "client"),
			Action:   securityapi.AuthorizationPolicy_ALLOW,
			Rules: []*securityapi.Rule{{
				To: []*securityapi.Rule_To{{Operation: &securityapi.Operation{Methods: []string{"GET"}, Ports: []string{"7070"}}}},
			}},
		}),
		// HTTP attributes in a DENY rule: kept without them (denies more).
		authz(nsAmbient, "deny-http", &securityapi.AuthorizationPolicy{
			Selector: selector("app", "server"),
			Action:   securityapi.AuthorizationPolicy_DENY,
			Rules: []*securityapi.Rule{{
				From: []*securityapi.Rule_From{{Source: &securityapi.Source{Namespaces: []string{"fx-evil"}}}},
				To:   []*securityapi.Rule_To{{Operation: &securityapi.Operation{Paths: []string{"/admin"}}}},
			}},
		}),
		authz(nsAmbient, "allow-nothing", &securityapi.AuthorizationPolicy{
			Selector: selector("app", "optout"),
		}),
		authz(nsAmbient, "audit", &securityapi.AuthorizationPolicy{
			Action: securityapi.AuthorizationPolicy_AUDIT,
			Rules:  []*securityapi.Rule{{}},
		}),
		authz(pilot.Namespace, "global-deny", &securityapi.AuthorizationPolicy{
			Action: securityapi.AuthorizationPolicy_DENY,
			Rules: []*securityapi.Rule{{
				From: []*securityapi.Rule_From{{Source: &securityapi.Source{Principals: []string{"*/sa/forbidden"}}}},
				To:   []*securityapi.Rule_To{{Operation: &securityapi.Operation{Ports: []string{"22", "23"}}}},
			}},
		}),
		authz(nsPlain, "allow-all", &securityapi.AuthorizationPolicy{
			Rules: []*securityapi.Rule{{}},
		}),
	}
}

func fixturePeerAuthentications() []*securityv1.PeerAuthentication {
	return []*securityv1.PeerAuthentication{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "strict", Namespace: nsAmbient},
			Spec: securityapi.PeerAuthentication{
				Mtls: &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT},
			},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "server-ports", Namespace: nsAmbient},
			Spec: securityapi.PeerAuthentication{
				Selector: selector("app", "server"),
				PortLevelMtls: map[uint32]*securityapi.PeerAuthentication_MutualTLS{
					9090: {Mode: securityapi.PeerAuthentication_MutualTLS_PERMISSIVE},
				},
			},
		},
	}
}

// applyFixture creates the fixture's objects and writes the pods' status.
func applyFixture(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("fixture: %s: %v", what, err)
		}
	}
	for _, n := range []string{nodeA, nodeB} {
		// Nodes exist so that the pod garbage collector does not delete
		// the pods bound to them as orphans.
		_, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{})
		must("node "+n, err)
	}
	_, err := c.CreateNamespace(ctx, nsAmbient, map[string]string{"istio.io/dataplane-mode": "ambient"})
	must("namespace", err)
	_, err = c.CreateNamespace(ctx, nsPlain, nil)
	must("namespace", err)
	for _, sa := range []string{"server", "client"} {
		_, err := c.CreateServiceAccount(ctx, nsAmbient, sa)
		must("service account", err)
	}
	for _, ns := range []string{nsAmbient, nsPlain} {
		must("default service account", c.WaitForServiceAccount(ctx, ns, "default"))
	}
	for _, s := range fixtureServices {
		_, err := c.Client.CoreV1().Services(s.Namespace).Create(ctx, s.DeepCopy(), metav1.CreateOptions{})
		must("service "+s.Name, err)
	}
	for _, fp := range fixturePods {
		pod, err := c.Client.CoreV1().Pods(fp.ns).Create(ctx, fp.object(), metav1.CreateOptions{})
		must("pod "+fp.name, err)
		pod.Status = fp.status()
		_, err = c.Client.CoreV1().Pods(fp.ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		must("pod status "+fp.name, err)
	}
	ic, err := istioclient.NewForConfig(c.Config)
	must("istio client", err)
	for _, p := range fixturePolicies() {
		_, err := ic.SecurityV1().AuthorizationPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
		must(fmt.Sprintf("AuthorizationPolicy %s/%s", p.Namespace, p.Name), err)
	}
	for _, p := range fixturePeerAuthentications() {
		_, err := ic.SecurityV1().PeerAuthentications(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
		must(fmt.Sprintf("PeerAuthentication %s/%s", p.Namespace, p.Name), err)
	}
}
