// Package rootcert publishes istiod's trust bundle to every namespace as
// Istio does: a ConfigMap istio-ca-root-cert, key root-cert.pem, labelled
// istio.io/config=true. Workloads and proxies mount it (ztunnel in
// istiod's namespace, waypoints in theirs) to verify istiod and each other.
//
// # Contract
//
// Controller.Run watches namespaces and the ConfigMaps named
// istio-ca-root-cert (a field-selected informer), and reconciles one
// namespace per work-queue key, level-triggered: Reconcile reads the cached
// namespace and ConfigMap and creates the ConfigMap when missing, or
// updates it when its root-cert.pem or its label differs (other keys and
// labels a user added are kept). A namespace added later is reconciled on
// its add event; a deleted or edited ConfigMap on its own event, so it is
// recreated or fixed at once. Namespaces being deleted are skipped, and so
// are kube-public, kube-node-lease and local-path-storage, as Istio skips
// them (kube-system is not skipped: ztunnel may run there). Failed
// reconciles are retried with client-go's rate limiter (5 ms doubling to
// 1000 s, plus an overall 10/s bucket). Objects from the informer caches
// are never modified.
//
// Several istiod replicas may run the controller at once: they write the
// same content, and a conflict is retried after re-reading.
//
// RBAC: namespaces get/list/watch; configmaps list/watch (cluster-wide,
// field-selected), create, and update.
package rootcert
