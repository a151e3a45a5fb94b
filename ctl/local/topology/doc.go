// Package topology holds the local mesh's topology file: nodes, namespaces
// with labels, pods (namespace, node, service account, labels, what they
// run), services (selector, ports, VIP) and Istio policy objects.
//
// Parse validates the whole file and reports every problem with its path
// (pods[2].node) and the fix; a file that fails validation is never
// half-applied. Enrolled answers the ambient enrollment question of
// DESIGN.md section 2 from the labels alone.
package topology
