package agent

import (
	"context"
	"net/netip"
)

// Pod is a pod of this node as a PodSource knows it.
type Pod struct {
	UID            string
	Name           string
	Namespace      string
	ServiceAccount string
	Labels         map[string]string
	// NamespaceLabels are the labels of the pod's namespace.
	NamespaceLabels map[string]string
	// Netns is the path of the pod's network namespace when the source knows
	// it (local mode does; Kubernetes does not); empty otherwise.
	Netns string
	// IPs are set once the pod's network is up (CNI ADD succeeded). The
	// reconciler only captures pods with IPs; pods without are the business
	// of the CNI ADD in flight.
	IPs []netip.Addr
	// Redirected reports whether the pod carries the annotation saying the
	// agent captured it (Kubernetes: RedirectionAnnotation). Sources
	// without such a mark (local mode) leave it false and have no Annotator.
	Redirected bool
}

// Key is namespace/name.
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

// PodSource lists the pods scheduled on this node and signals changes. It is
// safe for concurrent use.
type PodSource interface {
	// Pods returns a copy of this node's pods and whether the source has
	// synced (read the cluster state at least once). Before it has synced
	// the list means nothing and the agent releases nothing.
	Pods() (pods []Pod, synced bool)
	// Changed returns a channel that is closed at the first change after the
	// call (pods or sync state). Call Pods after it fires.
	Changed() <-chan struct{}
}

// Annotator marks pods in the cluster as captured or not (Kubernetes:
// RedirectionAnnotation), for other components and users to see. Optional:
// local mode has none. Implementations return nil for pods that are gone.
type Annotator interface {
	Annotate(ctx context.Context, pod Pod, captured bool) error
}
