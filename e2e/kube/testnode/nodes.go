package testnode

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// createNodes creates (or takes over) a Node object per node, with its
// backbone address as InternalIP, its pod CIDR, and Ready status.
func (n *Nodes) createNodes(ctx context.Context) error {
	for i, name := range n.opts.Nodes {
		nodes := n.opts.Client.CoreV1().Nodes()
		obj := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
				"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
			}},
			Spec: corev1.NodeSpec{PodCIDR: PodCIDR(i).String(), PodCIDRs: []string{PodCIDR(i).String()}},
		}
		if _, err := nodes.Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating Node %s: %w", name, err)
		}
		// Controllers (node lifecycle, TTL) update a new Node right away:
		// re-read and retry the status write on a conflict.
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := nodes.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			now := metav1.Now()
			cur.Status.Addresses = []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: NodeIP(i).String()},
				{Type: corev1.NodeHostName, Address: name},
			}
			cur.Status.Conditions = []corev1.NodeCondition{{
				Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "TestNodeReady",
				Message: "e2e/kube/testnode runs this node's pods", LastHeartbeatTime: now, LastTransitionTime: now,
			}}
			_, err = nodes.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			return fmt.Errorf("writing the status of Node %s: %w", name, err)
		}
	}
	return nil
}
