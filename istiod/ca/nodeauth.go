package ca

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// NodePods is the view of the cluster's pods that node authorization reads:
// the Kubernetes pod cache (istiod/config/kube.Source) or, in local mode,
// the pods of the config dir istiod last loaded.
type NodePods interface {
	// PodsOnNode returns the pods whose spec.nodeName is node. An error
	// means the view cannot answer (not loaded or synced yet).
	PodsOnNode(node string) ([]*corev1.Pod, error)
}

// NodeBound is implemented by a Caller that is one node's ztunnel. Node
// returns that node's name, or "" when the caller's node cannot be told
// (the caller is then authorized for no pod's identity). The xDS server
// binds such a caller's streams to its node.
type NodeBound interface {
	Node() string
}

// AuthorizeNode is Istio's node authorization, shared by every
// authenticator whose callers are node-bound ztunnels: the ztunnel on node
// may obtain id only if a pod in namespace id.Namespace running as service
// account id.ServiceAccount (an empty spec.serviceAccountName is
// "default") is on node and has not terminated (phase Succeeded or
// Failed). It returns nil, an error wrapping ErrPermissionDenied that
// names the node and the service account, or any other error when pods
// cannot answer (the CA reports Unavailable: never an allow). Decided per
// call from pods, never cached.
func AuthorizeNode(pods NodePods, node string, id spiffe.ID) error {
	list, err := pods.PodsOnNode(node)
	if err != nil {
		return fmt.Errorf("listing the pods of node %s: %w", node, err)
	}
	for _, p := range list {
		if p.Namespace == id.Namespace && PodServiceAccount(p) == id.ServiceAccount && !podTerminated(p) {
			return nil
		}
	}
	return fmt.Errorf("%w: no running pod with service account %s/%s on node %s",
		ErrPermissionDenied, id.Namespace, id.ServiceAccount, node)
}

// PodServiceAccount is the service account a pod runs as.
func PodServiceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

func podTerminated(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}
