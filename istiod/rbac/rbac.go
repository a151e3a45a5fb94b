// Package rbac is the least Kubernetes RBAC istiod needs, as data: the
// chart's ClusterRole and Role must grant exactly these rules (its tests
// compare them), and istiod's Kubernetes tests run istiod under them.
//
// Cluster-wide (ClusterRole):
//
//   - namespaces, pods, services, serviceaccounts: list, watch (the config
//     informers, istiod/config/kube; namespaces also for rootcert)
//   - discovery.k8s.io endpointslices: list, watch
//   - security.istio.io authorizationpolicies, peerauthentications: list,
//     watch (started once their CRDs exist; discovery of the group needs no
//     grant beyond the default system:discovery)
//   - authentication.k8s.io tokenreviews: create (CA and xDS callers'
//     tokens, istiod/ca/kubeauth)
//   - configmaps named istio-ca-root-cert: list, watch, update (the
//     informer lists with fieldSelector metadata.name=istio-ca-root-cert,
//     which resourceNames can restrict); configmaps: create (create cannot
//     be restricted by name) (istiod/rootcert)
//
// In istiod's namespace (Role), when --ca-secret is set:
//
//   - secrets named by --ca-secret: get; secrets: create (istiod/ca/casecret;
//     the Secret is never updated, listed or watched)
package rbac

import (
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/ambit-mesh/ambit/istiod/rootcert"
)

// ClusterRules are the rules of istiod's ClusterRole.
func ClusterRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"namespaces", "pods", "services", "serviceaccounts"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{"security.istio.io"}, Resources: []string{"authorizationpolicies", "peerauthentications"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{rootcert.ConfigMapName}, Verbs: []string{"list", "watch", "update"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"create"}},
	}
}

// NamespaceRules are the rules of istiod's Role in its own namespace, for
// the CA Secret caSecret; none when caSecret is empty.
func NamespaceRules(caSecret string) []rbacv1.PolicyRule {
	if caSecret == "" {
		return nil
	}
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{caSecret}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create"}},
	}
}
