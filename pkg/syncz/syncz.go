// Package syncz is the shape of istiod's GET /debug/syncz answer (served on
// its HTTP readiness/debug address): every proxy connected to it and, per
// resource type, whether the proxy acknowledged the last version istiod
// sent. ambitctl proxy-status reads it. The JSON field names are the
// contract; add fields, never rename them.
package syncz

import "time"

// Path is where istiod serves the list.
const Path = "/debug/syncz"

// Statuses of one resource type on one connection.
const (
	Synced  = "SYNCED"   // the last version sent was acknowledged
	Stale   = "STALE"    // a version was sent and not yet acknowledged (or was rejected)
	NotSent = "NOT SENT" // the proxy subscribed but nothing was sent yet
)

// Proxy is one connected xDS client.
type Proxy struct {
	// ID is the xDS node ID the proxy sent.
	ID string `json:"id"`
	// Kind is "ztunnel" or "waypoint".
	Kind string `json:"kind"`
	// Node is the Kubernetes node the proxy runs on, when known.
	Node string `json:"node,omitempty"`
	// Pod and Namespace name the proxy's pod, when known.
	Pod       string `json:"pod,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	// Version is the proxy's own version, when it sent one.
	Version     string    `json:"version,omitempty"`
	ConnectedAt time.Time `json:"connectedAt"`
	Types       []Type    `json:"types"`
}

// Type is one resource type on one connection.
type Type struct {
	TypeURL string `json:"typeUrl"`
	// Sent and Acked are the nonces of the last response istiod sent and
	// of the last one the proxy acknowledged.
	Sent  string `json:"sent,omitempty"`
	Acked string `json:"acked,omitempty"`
	// Status is Synced, Stale or NotSent.
	Status string `json:"status"`
	// Error is the proxy's last rejection (NACK) message, if any.
	Error string `json:"error,omitempty"`
}
