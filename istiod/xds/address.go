package xds

import (
	"istio.io/istio/pkg/workloadapi"
)

// TypeAddress is the type URL of workload discovery's Address resources
// (a workload or a service).
const TypeAddress = "type.googleapis.com/istio.workload.Address"

// AddressKey is the resource name istiod gives an Address, and the key
// Resources.Addresses expects: the workload's uid, or "namespace/hostname"
// for a service. It is "" for an Address with neither.
func AddressKey(a *workloadapi.Address) string {
	switch t := a.GetType().(type) {
	case *workloadapi.Address_Workload:
		return t.Workload.GetUid()
	case *workloadapi.Address_Service:
		return t.Service.GetNamespace() + "/" + t.Service.GetHostname()
	}
	return ""
}
