package agentapi

import "net/netip"

// DefaultSocketPath is where the cni-agent listens and the plugin dials unless
// configured otherwise.
const DefaultSocketPath = "/var/run/ambit/cni-agent.sock"

// PodRef names a pod sandbox as the container runtime passed it to the plugin.
type PodRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
	// ContainerID is the sandbox ID (CNI_CONTAINERID).
	ContainerID string `json:"containerID"`
	// Netns is the path of the pod's network namespace (CNI_NETNS); may be
	// empty on release, when the runtime already removed it.
	Netns string `json:"netns,omitempty"`
	// IfName is the pod's interface (CNI_IFNAME).
	IfName string `json:"ifName,omitempty"`
}

// String formats the pod as namespace/name for logs and messages.
func (p PodRef) String() string { return p.Namespace + "/" + p.Name }

// EnrollRequest asks the agent to enroll a pod whose network was just set up.
type EnrollRequest struct {
	PodRef
	// IPs are the pod's addresses from the previous plugin's result.
	IPs []netip.Addr `json:"ips,omitempty"`
}

// EnrollResponse is the agent's verdict. Enrolled=true means capture is in
// place inside the pod netns and ztunnel is ready for the pod.
type EnrollResponse struct {
	Enrolled bool `json:"enrolled"`
	// Reason says why the pod is not enrolled (e.g. "namespace not labelled
	// istio.io/dataplane-mode=ambient"); informational only.
	Reason string `json:"reason,omitempty"`
}

// ReleaseRequest tells the agent a pod sandbox is being torn down.
type ReleaseRequest struct {
	PodRef
}

// CheckRequest asks whether an enrolled pod's capture is still in place.
type CheckRequest struct {
	PodRef
}

// CheckResponse answers a CheckRequest. For a pod that is not enrolled,
// Enrolled is false and CaptureInPlace is meaningless.
type CheckResponse struct {
	Enrolled       bool   `json:"enrolled"`
	CaptureInPlace bool   `json:"captureInPlace"`
	Reason         string `json:"reason,omitempty"`
}

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
}
