package pilot_test

import (
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// The documented differences between pilot-discovery's and Ambit's workload
// discovery resources for the fixture, applied to both sides before they are
// compared. Every entry says why the difference is expected; anything else is
// a difference to fix.

func normalizeAddress(name string, a *workloadapi.Address) (string, bool) {
	return name, true
}

func normalizeAuthorization(name string, a *security.Authorization) (string, bool) {
	return name, true
}

func protoText(m proto.Message) string {
	return prototext.MarshalOptions{Multiline: true, Indent: "  "}.Format(m)
}
