package ambient

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/emptypb"
	"istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi/security"
)

// Sentinels of BuildAuthorization's error.
var (
	// ErrNotForZtunnel: the policy is valid but ztunnel does not enforce
	// it, so no Authorization is sent (CUSTOM; AUDIT while
	// Options.AuditPolicies is off; dry-run while Options.DryRunPolicies is
	// off).
	ErrNotForZtunnel = errors.New("not enforced by ztunnel")
	// ErrHTTPAttributes: the policy has HTTP attributes ztunnel cannot
	// check; it is sent without them, more restrictive than written (a
	// warning: the Authorization is returned too).
	ErrHTTPAttributes = errors.New("HTTP attributes not enforced by ztunnel")
)

// AuthorizationName is the resource name of a policy: "namespace/name".
func AuthorizationName(a *security.Authorization) string { return a.Namespace + "/" + a.Name }

// BuildAuthorization derives ztunnel's L4 form of an AuthorizationPolicy,
// as Istio does:
//
//   - scope: WORKLOAD_SELECTOR with a selector (the policy is then listed in
//     the authorization_policies of each workload it selects), else
//     NAMESPACE, or GLOBAL in the root namespace;
//   - a policy with targetRef(s) binds to a waypoint, not ztunnel: nil, nil;
//   - action ALLOW or DENY; CUSTOM: nil and ErrNotForZtunnel; AUDIT: a
//     dry-run DENY when Options.AuditPolicies (ztunnel logs its matches and
//     never enforces it), else nil and ErrNotForZtunnel;
//   - annotation istio.io/dry-run=true: dry_run set when
//     Options.DryRunPolicies, else nil and ErrNotForZtunnel;
//   - each rule becomes a group whose rules are: the alternatives of `to`
//     (ports, notPorts), then those of `from` (principals, namespaces,
//     serviceAccounts, ipBlocks and their not- forms; "*" is presence,
//     "x*" a prefix, "*x" a suffix), then one per `when` condition on
//     source.ip, source.namespace, source.principal, destination.ip or
//     destination.port;
//   - HTTP attributes (hosts, methods, paths and their not- forms,
//     requestPrincipals, remoteIpBlocks, other `when` keys) cannot be
//     checked at L4. In an ALLOW policy the rule that uses them is dropped
//     (it can never allow); in a DENY policy the rule is kept without them
//     (it denies more). Either way the Authorization comes with an error
//     wrapping ErrHTTPAttributes, naming the attributes.
//
// An empty `rules` gives no groups (ALLOW: allows nothing); a rule `{}`
// gives a group with no rules (matches everything).
func BuildAuthorization(ap *securityv1.AuthorizationPolicy, opts Options) (*security.Authorization, error) {
	o := opts.withDefaults()
	spec := &ap.Spec
	dryRun := false
	if v := ap.Annotations[AnnotationDryRun]; v != "" {
		dryRun, _ = strconv.ParseBool(v) // Istio: an unparsable value is "false"
	}
	if dryRun && !o.DryRunPolicies {
		return nil, fmt.Errorf("%w: dry-run policies are not sent to ztunnel unless enabled (annotation %s)", ErrNotForZtunnel, AnnotationDryRun)
	}
	if spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0 {
		return nil, nil
	}
	scope := security.Scope_WORKLOAD_SELECTOR
	if spec.GetSelector() == nil {
		scope = security.Scope_NAMESPACE
		if ap.Namespace == o.RootNamespace {
			scope = security.Scope_GLOBAL
		}
	}
	var action security.Action
	boilerplate := "Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more restrictive than requested."
	switch spec.GetAction() {
	case v1beta1.AuthorizationPolicy_ALLOW:
		action = security.Action_ALLOW
	case v1beta1.AuthorizationPolicy_DENY:
		action = security.Action_DENY
		boilerplate = "DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more restrictive than requested."
	case v1beta1.AuthorizationPolicy_AUDIT:
		if !o.AuditPolicies {
			return nil, fmt.Errorf("%w: AUDIT policies are not sent to ztunnel unless enabled (--audit-policies)", ErrNotForZtunnel)
		}
		// Audited as a DENY that never enforces: its rules keep the DENY
		// treatment of HTTP attributes, so it logs a superset of the
		// connections it names.
		action, dryRun = security.Action_DENY, true
		boilerplate = "AUDIT policy with HTTP attributes is audited without the HTTP rules: it logs more connections than requested."
	default:
		return nil, fmt.Errorf("%w: ztunnel does not support the %s action", ErrNotForZtunnel, spec.GetAction())
	}
	out := &security.Authorization{
		Name:      ap.Name,
		Namespace: ap.Namespace,
		Scope:     scope,
		Action:    action,
		DryRun:    dryRun,
	}
	l7 := map[string]bool{}
	for _, r := range spec.GetRules() {
		if rules := convertRule(action, r, ap.Namespace, l7); rules != nil {
			out.Groups = append(out.Groups, &security.Group{Rules: rules})
		}
	}
	if len(l7) > 0 {
		found := make([]string, 0, len(l7))
		for k := range l7 {
			found = append(found, k)
		}
		sort.Strings(found)
		return out, fmt.Errorf("%w (found: %s). In ambient mode you must use a waypoint proxy to enforce HTTP rules. %s",
			ErrHTTPAttributes, strings.Join(found, ", "), boilerplate)
	}
	return out, nil
}

var l4When = map[string]bool{
	"source.ip": true, "source.namespace": true, "source.principal": true,
	"destination.ip": true, "destination.port": true,
}

// convertRule returns the rules of one policy rule's group, or nil when the
// rule is dropped (ALLOW with HTTP attributes). It adds the HTTP attribute
// names it meets to l7.
func convertRule(action security.Action, r *v1beta1.Rule, ns string, l7 map[string]bool) []*security.Rules {
	found := false
	note := func(name string, n int) {
		if n > 0 {
			l7[name] = true
			found = true
		}
	}
	var to []*security.Match
	for _, t := range r.GetTo() {
		op := t.GetOperation()
		note("hosts", len(op.GetHosts()))
		note("notHosts", len(op.GetNotHosts()))
		note("methods", len(op.GetMethods()))
		note("notMethods", len(op.GetNotMethods()))
		note("paths", len(op.GetPaths()))
		note("notPaths", len(op.GetNotPaths()))
		to = append(to, &security.Match{
			DestinationPorts:    ports(op.GetPorts()),
			NotDestinationPorts: ports(op.GetNotPorts()),
		})
	}
	var from []*security.Match
	for _, f := range r.GetFrom() {
		s := f.GetSource()
		note("remoteIpBlocks", len(s.GetRemoteIpBlocks()))
		note("notRemoteIpBlocks", len(s.GetNotRemoteIpBlocks()))
		note("requestPrincipals", len(s.GetRequestPrincipals()))
		note("notRequestPrincipals", len(s.GetNotRequestPrincipals()))
		from = append(from, &security.Match{
			SourceIps:          addresses(s.GetIpBlocks()),
			NotSourceIps:       addresses(s.GetNotIpBlocks()),
			Namespaces:         stringMatches(s.GetNamespaces()),
			NotNamespaces:      stringMatches(s.GetNotNamespaces()),
			ServiceAccounts:    serviceAccounts(s.GetServiceAccounts(), ns),
			NotServiceAccounts: serviceAccounts(s.GetNotServiceAccounts(), ns),
			Principals:         stringMatches(s.GetPrincipals()),
			NotPrincipals:      stringMatches(s.GetNotPrincipals()),
		})
	}
	rules := []*security.Rules{}
	if len(to) > 0 {
		rules = append(rules, &security.Rules{Matches: to})
	}
	if len(from) > 0 {
		rules = append(rules, &security.Rules{Matches: from})
	}
	for _, w := range r.GetWhen() {
		key := w.GetKey()
		if !l4When[key] {
			note(key, 1)
		}
		m := &security.Match{}
		vals, not := w.GetValues(), w.GetNotValues()
		switch key {
		case "source.namespace":
			m.Namespaces, m.NotNamespaces = stringMatches(vals), stringMatches(not)
		case "source.principal":
			m.Principals, m.NotPrincipals = stringMatches(vals), stringMatches(not)
		case "source.ip":
			m.SourceIps, m.NotSourceIps = addresses(vals), addresses(not)
		case "destination.ip":
			m.DestinationIps, m.NotDestinationIps = addresses(vals), addresses(not)
		case "destination.port":
			m.DestinationPorts, m.NotDestinationPorts = ports(vals), ports(not)
		}
		rules = append(rules, &security.Rules{Matches: []*security.Match{m}})
	}
	if action == security.Action_ALLOW && found {
		return nil
	}
	return rules
}

func stringMatches(vs []string) []*security.StringMatch {
	out := make([]*security.StringMatch, 0, len(vs))
	for _, v := range vs {
		var m security.StringMatch
		switch {
		case v == "*":
			m.MatchType = &security.StringMatch_Presence{Presence: &emptypb.Empty{}}
		case strings.HasPrefix(v, "*"):
			m.MatchType = &security.StringMatch_Suffix{Suffix: v[1:]}
		case strings.HasSuffix(v, "*"):
			m.MatchType = &security.StringMatch_Prefix{Prefix: v[:len(v)-1]}
		default:
			m.MatchType = &security.StringMatch_Exact{Exact: v}
		}
		out = append(out, &m)
	}
	return out
}

// serviceAccounts: "ns/sa", or "sa" in the policy's namespace.
func serviceAccounts(vs []string, ns string) []*security.ServiceAccountMatch {
	out := make([]*security.ServiceAccountMatch, 0, len(vs))
	for _, v := range vs {
		if n, sa, ok := strings.Cut(v, "/"); ok {
			out = append(out, &security.ServiceAccountMatch{Namespace: n, ServiceAccount: sa})
		} else {
			out = append(out, &security.ServiceAccountMatch{Namespace: ns, ServiceAccount: v})
		}
	}
	return out
}

// ports parses port numbers, skipping malformed ones (as Istio does; the
// config loader rejects them first).
func ports(vs []string) []uint32 {
	out := make([]uint32, 0, len(vs))
	for _, v := range vs {
		p, err := strconv.ParseUint(v, 10, 32)
		if err != nil || p > 65535 {
			continue
		}
		out = append(out, uint32(p))
	}
	return out
}

// addresses parses IPs and CIDRs (the address keeps its host bits, as in
// Istio), skipping malformed ones.
func addresses(vs []string) []*security.Address {
	out := make([]*security.Address, 0, len(vs))
	for _, v := range vs {
		if v == "" {
			continue
		}
		var a netip.Addr
		var bits int
		if strings.Contains(v, "/") {
			p, err := netip.ParsePrefix(v)
			if err != nil {
				continue
			}
			a, bits = p.Addr(), p.Bits()
		} else {
			ip, err := netip.ParseAddr(v)
			if err != nil {
				continue
			}
			a, bits = ip, ip.BitLen()
		}
		out = append(out, &security.Address{Address: a.AsSlice(), Length: uint32(bits)})
	}
	return out
}

// sentToZtunnel reports whether BuildAuthorization yields a policy for ap,
// without building it.
func sentToZtunnel(ap *securityv1.AuthorizationPolicy, o Options) bool {
	spec := &ap.Spec
	if spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0 {
		return false
	}
	if v := ap.Annotations[AnnotationDryRun]; v != "" && !o.DryRunPolicies {
		if b, _ := strconv.ParseBool(v); b {
			return false
		}
	}
	a := spec.GetAction()
	return a == v1beta1.AuthorizationPolicy_ALLOW || a == v1beta1.AuthorizationPolicy_DENY ||
		a == v1beta1.AuthorizationPolicy_AUDIT && o.AuditPolicies
}
