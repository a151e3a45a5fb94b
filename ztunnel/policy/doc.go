// Package policy evaluates Istio L4 authorization policies (the workload
// API's security.Authorization) for one connection. It is pure: no I/O, no
// goroutines, no clock; the same inputs always give the same Result.
//
// Decision order (DESIGN.md section 2), over the policies that apply to the
// destination workload (selecting them is the caller's job, see
// ztunnel/state):
//
//  1. any enforced DENY policy that matches → deny;
//  2. no enforced ALLOW policy applies → allow;
//  3. an enforced ALLOW policy matches → allow;
//  4. otherwise → deny.
//
// Dry-run policies (Authorization.dry_run, Istio's
// istio.io/dry-run annotation; the workload API has no AUDIT action, istiod
// refuses to send AUDIT policies to ztunnel) are evaluated too, and the ones
// that match are listed in Result.Audits; they never change the decision.
//
// Matching follows the workload API proto and the reference ztunnel:
//
//   - Authorization.groups are ORed; a policy with no groups matches nothing.
//     (istiod turns `spec: {}` into an ALLOW with no groups, so such a policy
//     is "allow nothing"; it turns an ALLOW rule with HTTP-only attributes
//     into no group at all, so that rule can never allow.)
//   - Group.rules are ANDed; a group with no rules matches everything
//     (istiod turns the rule `- {}` into such a group: "allow all").
//   - Rules.matches are ORed (istiod puts the alternatives of one `from:` or
//     `to:` list there); a Rules with no matches matches. The proto comment
//     on Rules says "AND-ed", but both istiod's generator and the reference
//     ztunnel treat the entries as alternatives; we follow them.
//   - Within one Match every set field must hold (AND); within a field any
//     entry may hold (OR); a not_ field holds when none of its entries does.
//   - An empty Match (every field empty) is what istiod leaves when it strips
//     HTTP attributes from a `from`/`to` entry. The reference ztunnel skips
//     it (matches nothing); that is fail-safe for ALLOW but, for DENY, would
//     silently drop a deny that istiod reports as "enforced without the HTTP
//     rules, more restrictive". We fail safe both ways: an empty Match
//     matches nothing in an ALLOW policy and everything in a DENY policy
//     (DESIGN.md: "a policy with L7 rules enforced at ztunnel denies").
//   - principals: StringMatch against the peer's SPIFFE ID without the
//     "spiffe://" scheme (<td>/ns/<ns>/sa/<sa>), as istiod sends them.
//     namespaces: against the peer's namespace. service_accounts: namespace
//     and service account both equal. A plaintext peer has no identity, so
//     no principals/namespaces/service_accounts entry matches it, and a
//     not_ form of them always holds for it: `not_principals: [presence]`
//     is exactly "no mTLS identity", which is how STRICT PeerAuthentication
//     is expressed (StrictPolicy).
//   - StringMatch: exact, prefix, suffix; presence holds for any non-empty
//     value. A StringMatch with no match type never matches.
//   - source_ips/destination_ips: CIDR (address bytes + prefix length); IPv4
//     and IPv4-mapped IPv6 are compared unmapped. destination_ports: equal.
//   - An action other than ALLOW or DENY is treated as DENY (fail safe).
package policy
