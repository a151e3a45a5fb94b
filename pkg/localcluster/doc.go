// Package localcluster is the cluster state file of local mode: the
// namespaces (with labels) and pods (with uid, node, labels, service account,
// IPs and network-namespace path) that a Kubernetes API server would hold.
// ambitctl writes it; the node agents' local pod source reads and watches it.
//
// Writes are atomic (temp file + rename), so a reader sees the old or the new
// state, never half of one. Load validates the file and names the bad field.
package localcluster
