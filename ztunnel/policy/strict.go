package policy

import (
	"google.golang.org/protobuf/types/known/emptypb"
	"istio.io/istio/pkg/workloadapi/security"
)

// StrictPolicyName is the name istiod gives the policy it derives from a
// STRICT PeerAuthentication (pilot/pkg/serviceregistry/ambient,
// staticStrictPolicyName). The '_' keeps it apart from Kubernetes names.
const StrictPolicyName = "istio_converted_static_strict"

// StrictPolicy returns the L4 form of STRICT PeerAuthentication: a DENY
// that matches every connection without a peer identity
// (not_principals: [presence]). istiod sends it once, in the root namespace
// with scope WORKLOAD_SELECTOR, and lists "<root>/istio_converted_static_strict"
// in the authorization_policies of each workload under STRICT; a local
// config may instead give it scope NAMESPACE or GLOBAL.
func StrictPolicy(scope security.Scope, namespace string) *security.Authorization {
	return &security.Authorization{
		Name:      StrictPolicyName,
		Namespace: namespace,
		Scope:     scope,
		Action:    security.Action_DENY,
		Groups: []*security.Group{{
			Rules: []*security.Rules{{
				Matches: []*security.Match{{
					NotPrincipals: []*security.StringMatch{{
						MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}},
					}},
				}},
			}},
		}},
	}
}
