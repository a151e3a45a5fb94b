package kube

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestFindPod(t *testing.T) {
	pod := func(name, node string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: DefaultNamespace, Labels: map[string]string{LabelApp: AppZtunnel}},
			Spec:       corev1.PodSpec{NodeName: node},
			Status:     corev1.PodStatus{Phase: phase},
		}
	}
	c := &Client{Clientset: fake.NewClientset(
		pod("ztunnel-b", "node-b", corev1.PodRunning),
		pod("ztunnel-a", "node-a", corev1.PodRunning),
		pod("ztunnel-c", "node-c", corev1.PodPending),
	)}
	ctx := context.Background()
	if p, err := FindPod(ctx, c, DefaultNamespace, AppZtunnel, ""); err != nil || p.Name != "ztunnel-a" {
		t.Errorf("any node: %v %v", p, err)
	}
	if p, err := FindPod(ctx, c, DefaultNamespace, AppZtunnel, "node-b"); err != nil || p.Name != "ztunnel-b" {
		t.Errorf("node-b: %v %v", p, err)
	}
	if _, err := FindPod(ctx, c, DefaultNamespace, AppZtunnel, "node-c"); err == nil || !strings.Contains(err.Error(), "nodes with one: node-a, node-b") {
		t.Errorf("node-c (pending): %v", err)
	}
	if _, err := FindPod(ctx, c, "elsewhere", AppZtunnel, ""); err == nil || !strings.Contains(err.Error(), "is Ambit installed there") {
		t.Errorf("empty namespace: %v", err)
	}
}
