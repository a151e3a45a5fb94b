package main

import (
	"errors"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/istiod/config"
)

// errPodsNotLoaded: the config source has not delivered its first snapshot.
var errPodsNotLoaded = errors.New("istiod has not loaded its first config yet; retry")

// snapshotPods is the pods view of a snapshot source (local mode's config
// dir): the pods of the snapshot istiod last pushed to xDS, indexed by
// spec.nodeName on first use. Safe for concurrent use; set is called by
// the push loop.
type snapshotPods struct {
	cur atomic.Pointer[podIndex]
}

var _ ca.NodePods = (*snapshotPods)(nil)

type podIndex struct {
	snap   *config.Snapshot
	once   sync.Once
	byNode map[string][]*corev1.Pod
}

// set makes snap the current view.
func (v *snapshotPods) set(snap *config.Snapshot) {
	if old := v.cur.Load(); old != nil && old.snap == snap {
		return
	}
	v.cur.Store(&podIndex{snap: snap})
}

// PodsOnNode implements ca.NodePods.
func (v *snapshotPods) PodsOnNode(node string) ([]*corev1.Pod, error) {
	idx := v.cur.Load()
	if idx == nil {
		return nil, errPodsNotLoaded
	}
	idx.once.Do(func() {
		idx.byNode = map[string][]*corev1.Pod{}
		for _, p := range idx.snap.Pods {
			if p.Spec.NodeName != "" {
				idx.byNode[p.Spec.NodeName] = append(idx.byNode[p.Spec.NodeName], p)
			}
		}
	})
	return idx.byNode[node], nil
}
