package config

import (
	"context"
	"sort"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Source publishes config snapshots. See the package doc for the contract.
type Source interface {
	// Run watches the underlying config until ctx ends. It publishes a
	// first snapshot before its first send on Changes.
	Run(ctx context.Context) error
	// Snapshot returns the latest snapshot; an empty one before the first
	// load. Safe for concurrent use.
	Snapshot() *Snapshot
	// Changes receives a value after each new snapshot (buffer of one,
	// coalescing).
	Changes() <-chan struct{}
}

// Snapshot is one consistent view of the config objects. Maps are keyed by
// Key(namespace, name); Namespaces by name alone. A Snapshot and its objects
// are read-only once published.
type Snapshot struct {
	Namespaces            map[string]*corev1.Namespace
	Pods                  map[string]*corev1.Pod
	Services              map[string]*corev1.Service
	ServiceAccounts       map[string]*corev1.ServiceAccount
	EndpointSlices        map[string]*discoveryv1.EndpointSlice
	AuthorizationPolicies map[string]*securityv1.AuthorizationPolicy
	PeerAuthentications   map[string]*securityv1.PeerAuthentication
}

// NewSnapshot returns an empty snapshot with every map allocated.
func NewSnapshot() *Snapshot {
	return &Snapshot{
		Namespaces:            map[string]*corev1.Namespace{},
		Pods:                  map[string]*corev1.Pod{},
		Services:              map[string]*corev1.Service{},
		ServiceAccounts:       map[string]*corev1.ServiceAccount{},
		EndpointSlices:        map[string]*discoveryv1.EndpointSlice{},
		AuthorizationPolicies: map[string]*securityv1.AuthorizationPolicy{},
		PeerAuthentications:   map[string]*securityv1.PeerAuthentication{},
	}
}

// Key is the map key of a namespaced object: "namespace/name".
func Key(namespace, name string) string { return namespace + "/" + name }

// SortedKeys returns m's keys in order, for deterministic iteration.
func SortedKeys[T any](m map[string]T) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Len is the number of objects in s.
func (s *Snapshot) Len() int {
	return len(s.Namespaces) + len(s.Pods) + len(s.Services) + len(s.ServiceAccounts) +
		len(s.EndpointSlices) + len(s.AuthorizationPolicies) + len(s.PeerAuthentications)
}

// Add puts a decoded object (one of the types Snapshot holds) into s,
// reporting false when an object of that kind and key is already there (s is
// then unchanged). It panics on other types: Decode never returns them.
func (s *Snapshot) Add(obj Object) bool {
	switch o := obj.(type) {
	case *corev1.Namespace:
		return put(s.Namespaces, o.Name, o)
	case *corev1.Pod:
		return put(s.Pods, Key(o.Namespace, o.Name), o)
	case *corev1.Service:
		return put(s.Services, Key(o.Namespace, o.Name), o)
	case *corev1.ServiceAccount:
		return put(s.ServiceAccounts, Key(o.Namespace, o.Name), o)
	case *discoveryv1.EndpointSlice:
		return put(s.EndpointSlices, Key(o.Namespace, o.Name), o)
	case *securityv1.AuthorizationPolicy:
		return put(s.AuthorizationPolicies, Key(o.Namespace, o.Name), o)
	case *securityv1.PeerAuthentication:
		return put(s.PeerAuthentications, Key(o.Namespace, o.Name), o)
	}
	panic("config: Snapshot.Add of unsupported type")
}

func put[T any](m map[string]T, k string, v T) bool {
	if _, dup := m[k]; dup {
		return false
	}
	m[k] = v
	return true
}
