package pilot_test

import (
	"strings"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/e2e/kube/pilot"
)

// The documented differences between pilot-discovery's and Ambit's workload
// discovery resources for the fixture, applied to both sides before they are
// compared. Every entry says why the difference is expected; anything else is
// a difference to fix.

func normalizeAddress(name string, a *workloadapi.Address) (string, bool) {
	// Workloads that pilot derives from the EndpointSlices of a Service
	// without selector (endpoints that are no pod: uid
	// "<cluster>/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<ip>") are not
	// produced by Ambit: istiod/ambient's package doc lists this as a known
	// gap. The Service itself is compared.
	if w := a.GetWorkload(); w != nil && strings.HasPrefix(w.GetUid(), pilot.ClusterID+"/discovery.k8s.io/EndpointSlice/") {
		return name, false
	}
	return name, true
}

func normalizeAuthorization(name string, a *security.Authorization) (string, bool) {
	return name, true
}

func protoText(m proto.Message) string {
	return prototext.MarshalOptions{Multiline: true, Indent: "  "}.Format(m)
}
