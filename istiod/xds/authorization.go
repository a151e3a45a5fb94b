package xds

import (
	"istio.io/istio/pkg/workloadapi/security"
)

// TypeAuthorization is the type URL of workload discovery's L4
// authorization policies.
const TypeAuthorization = "type.googleapis.com/istio.security.Authorization"

// AuthorizationKey is the resource name of a policy, and the key
// Resources.Authorizations expects: "namespace/name".
func AuthorizationKey(p *security.Authorization) string {
	return p.GetNamespace() + "/" + p.GetName()
}
