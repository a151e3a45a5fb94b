package pilot_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/pilot"
	"github.com/ambit-mesh/ambit/istiod/config"
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
	phase              corev1.PodPhase // default Running (with an IP)
	terminating        bool            // deleted, held by a finalizer
}

// finalizer holds the terminating pod (nothing removes it; the cluster is
// discarded after the tests).
const finalizer = "ambit.test/hold"

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
	// A native HBONE workload (no capture needed).
	{ns: nsPlain, name: "native", sa: "default", node: nodeA, ip: "10.244.1.40", ready: true,
		labels: map[string]string{"app": "native", "networking.istio.io/tunnel": "http"}},
	// Finished: no workload.
	{ns: nsPlain, name: "done", sa: "default", node: nodeB, ip: "10.244.2.41", ready: false, phase: corev1.PodSucceeded,
		labels: map[string]string{"app": "legacy"}},
	// Being deleted (held by a finalizer): UNHEALTHY.
	{ns: nsAmbient, name: "terminating", sa: "server", node: nodeB, ip: "10.244.2.42", ready: true,
		labels: map[string]string{"app": "server"}, terminating: true},
}

func (p fixturePod) object() *corev1.Pod {
	var fin []string
	if p.terminating {
		fin = []string{finalizer}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: p.ns, Labels: p.labels, Annotations: p.annot, Finalizers: fin},
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
	phase := p.phase
	if phase == "" {
		phase = corev1.PodRunning
	}
	return corev1.PodStatus{
		Phase:  phase,
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
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: nsAmbient},
		Spec: corev1.ServiceSpec{
			Selector:            map[string]string{"app": "web"},
			Ports:               []corev1.ServicePort{tcpPort("http", 80, intstr.FromInt32(8080), "kubernetes.io/h2c")},
			TrafficDistribution: ptr("PreferClose"),
		},
	},
	{
		ObjectMeta: metav1.ObjectMeta{Name: "node-local", Namespace: nsAmbient},
		Spec: corev1.ServiceSpec{
			Selector:              map[string]string{"app": "web"},
			Ports:                 []corev1.ServicePort{tcpPort("tcp", 81, intstr.FromInt32(8080), "")},
			InternalTrafficPolicy: ptr(corev1.ServiceInternalTrafficPolicyLocal),
		},
	},
	{
		ObjectMeta: metav1.ObjectMeta{Name: "not-ready", Namespace: nsAmbient},
		Spec: corev1.ServiceSpec{
			Selector:                 map[string]string{"app": "server"},
			Ports:                    []corev1.ServicePort{tcpPort("tcp", 82, intstr.FromString("grpc"), "")},
			PublishNotReadyAddresses: true,
		},
	},
	// No selector: its endpoints come from a hand-written EndpointSlice.
	{
		ObjectMeta: metav1.ObjectMeta{Name: "manual", Namespace: nsPlain},
		Spec: corev1.ServiceSpec{
			Ports: []corev1.ServicePort{tcpPort("tcp-db", 5432, intstr.FromInt32(5432), "")},
		},
	},
	{
		ObjectMeta: metav1.ObjectMeta{Name: "external", Namespace: nsPlain},
		Spec: corev1.ServiceSpec{
			Type:         corev1.ServiceTypeExternalName,
			ExternalName: "example.invalid",
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

func ptr[T any](v T) *T { return &v }

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
		authz(nsAmbient, "deny-when", &securityapi.AuthorizationPolicy{
			Selector: selector("app", "web"),
			Action:   securityapi.AuthorizationPolicy_DENY,
			Rules: []*securityapi.Rule{{
				From: []*securityapi.Rule_From{{Source: &securityapi.Source{NotNamespaces: []string{nsAmbient, "istio-system"}}}},
				When: []*securityapi.Condition{
					{Key: "source.namespace", Values: []string{nsPlain}},
					{Key: "destination.ip", NotValues: []string{"10.0.0.1", "10.1.0.0/16"}},
					{Key: "source.principal", Values: []string{"*"}},
				},
			}},
		}),
		authz(nsAmbient, "allow-sa", &securityapi.AuthorizationPolicy{
			Selector: selector("app", "web"),
			Rules: []*securityapi.Rule{{
				From: []*securityapi.Rule_From{
					{Source: &securityapi.Source{ServiceAccounts: []string{nsAmbient + "/client"}}},
					{Source: &securityapi.Source{NotServiceAccounts: []string{nsPlain + "/default"}}},
				},
				To: []*securityapi.Rule_To{
					{Operation: &securityapi.Operation{Ports: []string{"8080"}}},
					{Operation: &securityapi.Operation{Ports: []string{"8443"}}},
				},
			}},
		}),
		authz(pilot.Namespace, "mesh-allow-health", &securityapi.AuthorizationPolicy{
			Action: securityapi.AuthorizationPolicy_ALLOW,
			Rules: []*securityapi.Rule{{
				From: []*securityapi.Rule_From{{Source: &securityapi.Source{IpBlocks: []string{"169.254.7.127/32"}}}},
			}},
		}),
		dryRun(authz(nsAmbient, "dry-run", &securityapi.AuthorizationPolicy{
			Action: securityapi.AuthorizationPolicy_DENY,
			Rules:  []*securityapi.Rule{{}},
		})),
		// Bound to a waypoint by targetRefs: not ztunnel's.
		authz(nsAmbient, "targeted", &securityapi.AuthorizationPolicy{
			TargetRefs: []*typeapi.PolicyTargetReference{{Kind: "Service", Group: "", Name: "web"}},
			Action:     securityapi.AuthorizationPolicy_DENY,
			Rules:      []*securityapi.Rule{{}},
		}),
	}
}

func dryRun(p *securityv1.AuthorizationPolicy) *securityv1.AuthorizationPolicy {
	p.Annotations = map[string]string{"istio.io/dry-run": "true"}
	return p
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
		{
			ObjectMeta: metav1.ObjectMeta{Name: "mesh", Namespace: pilot.Namespace},
			Spec: securityapi.PeerAuthentication{
				Mtls: &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_PERMISSIVE},
			},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "native-strict", Namespace: nsPlain},
			Spec: securityapi.PeerAuthentication{
				Selector: selector("app", "native"),
				Mtls:     &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT},
				PortLevelMtls: map[uint32]*securityapi.PeerAuthentication_MutualTLS{
					8080: {Mode: securityapi.PeerAuthentication_MutualTLS_DISABLE},
				},
			},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "legacy-strict", Namespace: nsPlain},
			Spec: securityapi.PeerAuthentication{
				Selector: selector("app", "legacy"),
				Mtls:     &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT},
			},
		},
	}
}

// webIP is the IP the test gives the Deployment's one pod.
const webIP = "10.244.1.30"

// applyDeployment creates Deployment fx-ambient/web with one replica and,
// once the controllers created its pod (name unknown in advance), binds it to
// nodeA and writes its status: a pod with real owner references
// (ReplicaSet, Deployment), from which workload_name is derived.
func applyDeployment(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	labels := map[string]string{"app": "web"}
	_, err := c.Client.AppsV1().Deployments(nsAmbient).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: nsAmbient},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels,
					Annotations: map[string]string{"ambient.istio.io/redirection": "enabled"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "web", Image: "registry.invalid/web:1",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("fixture: deployment web: %v", err)
	}
	var pod *corev1.Pod
	err = cluster.Eventually(ctx, "the pod of Deployment web", func(ctx context.Context) error {
		l, err := c.Client.CoreV1().Pods(nsAmbient).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return err
		}
		if len(l.Items) != 1 {
			return fmt.Errorf("%d pods", len(l.Items))
		}
		pod = &l.Items[0]
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Client.CoreV1().Pods(nsAmbient).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: nsAmbient},
		Target:     corev1.ObjectReference{Kind: "Node", Name: nodeA},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("fixture: binding %s: %v", pod.Name, err)
	}
	pod, err = c.Client.CoreV1().Pods(nsAmbient).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = fixturePod{ip: webIP, ready: true}.status()
	if _, err := c.Client.CoreV1().Pods(nsAmbient).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("fixture: status of %s: %v", pod.Name, err)
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
		if fp.terminating {
			must("deleting pod "+fp.name, c.Client.CoreV1().Pods(fp.ns).Delete(ctx, fp.name, metav1.DeleteOptions{}))
		}
	}
	applyDeployment(ctx, t, c)
	_, err = c.Client.DiscoveryV1().EndpointSlices(nsPlain).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "manual-1", Namespace: nsPlain, Labels: map[string]string{discoveryv1.LabelServiceName: "manual"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.5.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("tcp-db"), Port: ptr[int32](5432), Protocol: ptr(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{})
	must("EndpointSlice manual-1", err)
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

// mutateFixture changes the fixture: a policy and a PeerAuthentication
// deleted, a pod's capture annotation removed and another's added, a pod
// deleted and one added, a namespace enrolled, a service port added.
func mutateFixture(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("mutating the fixture: %s: %v", what, err)
		}
	}
	ic, err := istioclient.NewForConfig(c.Config)
	must("istio client", err)
	must("delete AuthorizationPolicy allow-ipblock",
		ic.SecurityV1().AuthorizationPolicies(nsAmbient).Delete(ctx, "allow-ipblock", metav1.DeleteOptions{}))
	must("delete PeerAuthentication strict",
		ic.SecurityV1().PeerAuthentications(nsAmbient).Delete(ctx, "strict", metav1.DeleteOptions{}))
	pods := c.Client.CoreV1().Pods
	_, err = pods(nsAmbient).Patch(ctx, "server-1", types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"ambient.istio.io/redirection":null}}}`), metav1.PatchOptions{})
	must("unannotate server-1", err)
	_, err = pods(nsPlain).Patch(ctx, "legacy-1", types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"ambient.istio.io/redirection":"enabled"}}}`), metav1.PatchOptions{})
	must("annotate legacy-1", err)
	// Grace period 0: no kubelet confirms a graceful deletion.
	must("delete pod hostnet", pods(nsPlain).Delete(ctx, "hostnet", metav1.DeleteOptions{GracePeriodSeconds: ptr[int64](0)}))
	late := fixturePod{ns: nsAmbient, name: "late", sa: "client", node: nodeB, ip: lateIP, ready: true,
		labels: map[string]string{"app": "client"}}
	pod, err := pods(nsAmbient).Create(ctx, late.object(), metav1.CreateOptions{})
	must("pod late", err)
	pod.Status = late.status()
	_, err = pods(nsAmbient).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	must("status of pod late", err)
	_, err = c.Client.CoreV1().Namespaces().Patch(ctx, nsPlain, types.MergePatchType,
		[]byte(`{"metadata":{"labels":{"istio.io/dataplane-mode":"ambient"}}}`), metav1.PatchOptions{})
	must("enroll namespace "+nsPlain, err)
	svc, err := c.Client.CoreV1().Services(nsAmbient).Get(ctx, "client", metav1.GetOptions{})
	must("get service client", err)
	svc.Spec.Ports = append(svc.Spec.Ports, tcpPort("http-admin", 7071, intstr.FromString("http"), "http"))
	_, err = c.Client.CoreV1().Services(nsAmbient).Update(ctx, svc, metav1.UpdateOptions{})
	must("update service client", err)
}

const lateIP = "10.244.2.50"

// mutatedReady reports whether a snapshot shows every change of
// mutateFixture.
func mutatedReady(s *config.Snapshot) error {
	switch {
	case s.AuthorizationPolicies[config.Key(nsAmbient, "allow-ipblock")] != nil:
		return errors.New("allow-ipblock still there")
	case s.PeerAuthentications[config.Key(nsAmbient, "strict")] != nil:
		return errors.New("PeerAuthentication strict still there")
	case s.Pods[config.Key(nsAmbient, "server-1")] == nil ||
		s.Pods[config.Key(nsAmbient, "server-1")].Annotations["ambient.istio.io/redirection"] != "":
		return errors.New("server-1 still annotated")
	case s.Pods[config.Key(nsPlain, "legacy-1")] == nil ||
		s.Pods[config.Key(nsPlain, "legacy-1")].Annotations["ambient.istio.io/redirection"] != "enabled":
		return errors.New("legacy-1 not annotated yet")
	case s.Pods[config.Key(nsPlain, "hostnet")] != nil:
		return errors.New("hostnet still there")
	case s.Pods[config.Key(nsAmbient, "late")] == nil || s.Pods[config.Key(nsAmbient, "late")].Status.PodIP != lateIP:
		return errors.New("late not seen with its IP")
	case s.Namespaces[nsPlain] == nil || s.Namespaces[nsPlain].Labels["istio.io/dataplane-mode"] != "ambient":
		return errors.New(nsPlain + " not enrolled yet")
	case s.Services[config.Key(nsAmbient, "client")] == nil || len(s.Services[config.Key(nsAmbient, "client")].Spec.Ports) != 2:
		return errors.New("service client has not 2 ports yet")
	}
	return nil
}
