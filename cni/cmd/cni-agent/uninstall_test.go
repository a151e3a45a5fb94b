package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestUninstalling: the agent uninstalls itself at exit only when its
// DaemonSet is gone, being deleted, unreadable or no longer selects the
// node; an upgrade, a node restart or an unreachable API server leave the
// plugin and the pods' capture in place.
func TestUninstalling(t *testing.T) {
	dsName := types.NamespacedName{Namespace: "istio-system", Name: "ambit-cni-node"}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"kubernetes.io/os": "linux"}}}
	ds := func(mod func(*appsv1.DaemonSet)) *appsv1.DaemonSet {
		d := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: dsName.Namespace, Name: dsName.Name}}
		d.Spec.Template.Spec.NodeSelector = map[string]string{"kubernetes.io/os": "linux"}
		if mod != nil {
			mod(d)
		}
		return d
	}
	failGet := func(err error) func(*fake.Clientset) {
		return func(c *fake.Clientset) {
			c.PrependReactor("get", "daemonsets", func(k8stesting.Action) (bool, runtime.Object, error) { return true, nil, err })
		}
	}
	gr := schema.GroupResource{Group: "apps", Resource: "daemonsets"}
	for _, tc := range []struct {
		name    string
		objs    []runtime.Object
		react   func(*fake.Clientset)
		want    bool
		logHint string
	}{
		{"upgrade", []runtime.Object{node, ds(nil)}, nil, false, "still in place"},
		{"gone", []runtime.Object{node}, nil, true, "gone"},
		{"being deleted", []runtime.Object{node, ds(func(d *appsv1.DaemonSet) {
			d.DeletionTimestamp = &metav1.Time{}
			d.Finalizers = []string{"foreground"}
		})}, nil, true, "being deleted"},
		{"no longer selects the node", []runtime.Object{node, ds(func(d *appsv1.DaemonSet) {
			d.Spec.Template.Spec.NodeSelector = map[string]string{"pool": "mesh"}
		})}, nil, true, "no longer selects"},
		{"service account gone", []runtime.Object{node, ds(nil)}, failGet(apierrors.NewUnauthorized("token")), true, "may no longer read"},
		{"RBAC gone", []runtime.Object{node, ds(nil)}, failGet(apierrors.NewForbidden(gr, dsName.Name, errors.New("no"))), true, "may no longer read"},
		{"API server unreachable", []runtime.Object{node, ds(nil)}, failGet(errors.New("connection refused")), false, "cannot tell"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fake.NewClientset(tc.objs...)
			if tc.react != nil {
				tc.react(c)
			}
			var logs syncBuffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			if got := uninstalling(context.Background(), c, dsName, "n1", log); got != tc.want {
				t.Errorf("uninstalling = %v, want %v; log:\n%s", got, tc.want, logs.String())
			}
			if !strings.Contains(logs.String(), tc.logHint) {
				t.Errorf("log does not say %q:\n%s", tc.logHint, logs.String())
			}
		})
	}
}
