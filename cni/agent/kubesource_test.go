package agent_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ambit-mesh/ambit/cni/agent"
)

func kubePod(ns, name, node string, mod func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), Labels: map[string]string{"app": name}},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: "sa-" + name},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if mod != nil {
		mod(p)
	}
	return p
}

// waitFor polls the source until cond holds.
func waitFor(t *testing.T, s *agent.KubeSource, what string, cond func([]agent.Pod, bool) bool) []agent.Pod {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for {
		ch := s.Changed()
		pods, synced := s.Pods()
		if cond(pods, synced) {
			return pods
		}
		select {
		case <-ch:
		case <-time.After(time.Until(deadline)):
			t.Fatalf("%s: pods %+v synced %v", what, pods, synced)
		}
	}
}

func names(pods []agent.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Key())
	}
	return out
}

func TestKubeSourceFiltersAndConverts(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}},
		kubePod("mesh", "a", "n1", func(p *corev1.Pod) {
			p.Annotations = map[string]string{agent.NetnsAnnotation: "/var/run/netns/a", agent.RedirectionAnnotation: agent.RedirectionEnabled}
			p.Status.PodIP = "10.0.0.5"
			p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.5"}, {IP: "fd00::5"}}
		}),
		kubePod("mesh", "other-node", "n2", nil),
		kubePod("mesh", "host", "n1", func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		kubePod("mesh", "done", "n1", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		kubePod("mesh", "failed", "n1", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }),
		kubePod("plain", "pending", "n1", func(p *corev1.Pod) { p.Spec.ServiceAccountName = ""; p.Status.Phase = corev1.PodPending }),
	)
	s := agent.NewKubeSource(client, "n1", 0, nil)
	s.ReadNetnsAnnotation = true
	if pods, synced := s.Pods(); synced || len(pods) != 0 {
		t.Fatalf("before Run: %v %v", pods, synced)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	pods := waitFor(t, s, "synced", func(_ []agent.Pod, synced bool) bool { return synced })
	if got, want := names(pods), []string{"mesh/a", "plain/pending"}; !slices.Equal(got, want) {
		t.Fatalf("pods %v, want %v", got, want)
	}
	a := pods[0]
	wantIPs := []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")}
	if a.UID != "uid-a" || a.ServiceAccount != "sa-a" || a.Labels["app"] != "a" || a.NamespaceLabels["istio.io/dataplane-mode"] != "ambient" ||
		a.Netns != "/var/run/netns/a" || !a.Redirected || !slices.Equal(a.IPs, wantIPs) {
		t.Errorf("pod a: %+v", a)
	}
	p := pods[1]
	if p.ServiceAccount != "default" || p.Netns != "" || p.Redirected || len(p.IPs) != 0 || len(p.NamespaceLabels) != 0 {
		t.Errorf("pod pending (namespace without object): %+v", p)
	}

	// A namespace label change is a change of the pods.
	_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain", Labels: map[string]string{"k": "v"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "namespace labels", func(pods []agent.Pod, _ bool) bool {
		return len(pods) == 2 && pods[1].NamespaceLabels["k"] == "v"
	})
	// A deleted pod leaves.
	if err := client.CoreV1().Pods("mesh").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "deleted pod", func(pods []agent.Pod, _ bool) bool { return slices.Equal(names(pods), []string{"plain/pending"}) })
}

func TestKubeSourceAnnotate(t *testing.T) {
	client := fake.NewClientset(kubePod("mesh", "a", "n1", func(p *corev1.Pod) {
		p.Annotations = map[string]string{"keep": "me"}
	}))
	s := agent.NewKubeSource(client, "n1", 0, nil)
	ctx := context.Background()
	pod := agent.Pod{UID: "uid-a", Namespace: "mesh", Name: "a"}
	get := func() map[string]string {
		t.Helper()
		p, err := client.CoreV1().Pods("mesh").Get(ctx, "a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Annotations
	}
	if err := s.Annotate(ctx, pod, true); err != nil {
		t.Fatal(err)
	}
	if an := get(); an[agent.RedirectionAnnotation] != agent.RedirectionEnabled || an["keep"] != "me" {
		t.Errorf("after marking captured: %v", an)
	}
	if err := s.Annotate(ctx, pod, false); err != nil {
		t.Fatal(err)
	}
	if an := get(); len(an) != 1 || an["keep"] != "me" {
		t.Errorf("after marking released: %v", an)
	}
	if err := s.Annotate(ctx, agent.Pod{UID: "x", Namespace: "mesh", Name: "gone"}, false); err != nil {
		t.Errorf("a pod that is gone: %v", err)
	}
}
