package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/emptypb"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/ctl/local/topology"
	"github.com/ambit-mesh/ambit/ztunnel/policy"
)

// ErrPolicy is wrapped by every policy that cannot be converted to the
// workload API's L4 form.
var ErrPolicy = errors.New("policy not supported in local mode")

// policySet is the L4 form of a topology's policy objects.
type policySet struct {
	auths []*security.Authorization
	// perPod lists, by pod key, the WORKLOAD_SELECTOR policies
	// (namespace/name) that apply to the pod.
	perPod map[string][]string
}

// policyObject is the part of an AuthorizationPolicy or PeerAuthentication
// local mode reads.
type policyObject struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Annotations map[string]string `json:"annotations,omitempty"`
		Labels      map[string]string `json:"labels,omitempty"`
	} `json:"metadata"`
	Spec map[string]any `json:"spec"`
}

// PolicyKey names a policy object: Kind/namespace/name.
func PolicyKey(obj map[string]any) string {
	p, err := decodePolicy(obj)
	if err != nil {
		kind, _ := obj["kind"].(string)
		return kind + "/?"
	}
	return p.Kind + "/" + p.Metadata.Namespace + "/" + p.Metadata.Name
}

func decodePolicy(obj map[string]any) (*policyObject, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var p policyObject
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// convertPolicies turns the topology's policies into Authorizations:
// STRICT PeerAuthentication into ztunnel's static strict policy (listed by
// each workload under STRICT, with Istio's precedence: workload selector,
// then namespace, then the root namespace), and L4 AuthorizationPolicies
// into one Authorization each. Anything else is an error naming the policy.
func convertPolicies(t *topology.Topology) (policySet, error) {
	set := policySet{perPod: map[string][]string{}}
	var errs []error
	var pas []*policyObject
	for i, raw := range t.Policies {
		p, err := decodePolicy(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: policies[%d]: %v", ErrPolicy, i, err))
			continue
		}
		where := fmt.Sprintf("policies[%d] (%s %s/%s)", i, p.Kind, p.Metadata.Namespace, p.Metadata.Name)
		if p.Metadata.Namespace == "" {
			errs = append(errs, fmt.Errorf("%w: %s: metadata.namespace is required", ErrPolicy, where))
			continue
		}
		switch p.Kind {
		case "PeerAuthentication":
			if err := checkPeerAuthn(p); err != nil {
				errs = append(errs, fmt.Errorf("%w: %s: %v", ErrPolicy, where, err))
				continue
			}
			pas = append(pas, p)
		case "AuthorizationPolicy":
			a, sel, err := convertAuthz(p)
			if err != nil {
				errs = append(errs, fmt.Errorf("%w: %s: %v", ErrPolicy, where, err))
				continue
			}
			set.auths = append(set.auths, a)
			if sel != nil {
				key := a.Namespace + "/" + a.Name
				for _, pod := range t.Pods {
					if pod.Namespace == a.Namespace && labelsMatch(sel, pod.Labels) {
						set.perPod[pod.Key()] = append(set.perPod[pod.Key()], key)
					}
				}
			}
		default:
			errs = append(errs, fmt.Errorf("%w: %s: kind %q; use AuthorizationPolicy or PeerAuthentication", ErrPolicy, where, p.Kind))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return policySet{}, err
	}
	strictKey := RootNamespace + "/" + policy.StrictPolicyName
	anyStrict := false
	for _, pod := range t.Pods {
		if peerAuthnMode(pas, pod) == "STRICT" {
			set.perPod[pod.Key()] = append([]string{strictKey}, set.perPod[pod.Key()]...)
			anyStrict = true
		}
	}
	if anyStrict {
		set.auths = append(set.auths, policy.StrictPolicy(security.Scope_WORKLOAD_SELECTOR, RootNamespace))
	}
	sort.Slice(set.auths, func(i, j int) bool {
		return set.auths[i].Namespace+"/"+set.auths[i].Name < set.auths[j].Namespace+"/"+set.auths[j].Name
	})
	for k := range set.perPod {
		sort.Strings(set.perPod[k])
	}
	return set, nil
}

func labelsMatch(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// selector reads spec.selector.matchLabels; ok is false when the spec has
// no selector.
func selector(spec map[string]any) (sel map[string]string, ok bool, err error) {
	raw, ok := spec["selector"]
	if !ok || raw == nil {
		return nil, false, nil
	}
	m, _ := raw.(map[string]any)
	sel = map[string]string{}
	for k, v := range m {
		if k != "matchLabels" {
			return nil, false, fmt.Errorf("spec.selector.%s is not supported; use matchLabels", k)
		}
		labels, _ := v.(map[string]any)
		for lk, lv := range labels {
			s, isStr := lv.(string)
			if !isStr {
				return nil, false, fmt.Errorf("spec.selector.matchLabels.%s: want a string", lk)
			}
			sel[lk] = s
		}
	}
	return sel, true, nil
}

func checkPeerAuthn(p *policyObject) error {
	for k, v := range p.Spec {
		switch k {
		case "selector":
			if _, _, err := selector(p.Spec); err != nil {
				return err
			}
		case "mtls":
			m, _ := v.(map[string]any)
			for mk, mv := range m {
				if mk != "mode" {
					return fmt.Errorf("spec.mtls.%s is not supported", mk)
				}
				switch mv {
				case "STRICT", "PERMISSIVE", "DISABLE", "UNSET":
				default:
					return fmt.Errorf("spec.mtls.mode %v; use STRICT, PERMISSIVE, DISABLE or UNSET", mv)
				}
			}
		default:
			return fmt.Errorf("spec.%s is not supported in local mode (only selector and mtls.mode)", k)
		}
	}
	return nil
}

func peerAuthnModeOf(p *policyObject) string {
	m, _ := p.Spec["mtls"].(map[string]any)
	mode, _ := m["mode"].(string)
	return mode
}

// peerAuthnMode returns the mTLS mode for pod: a PeerAuthentication with a
// selector matching the pod in its namespace wins over one for the whole
// namespace, which wins over one for the whole mesh (root namespace);
// UNSET or no mode defers to the next level.
func peerAuthnMode(pas []*policyObject, pod topology.Pod) string {
	var workload, namespace, mesh string
	for _, p := range pas {
		mode := peerAuthnModeOf(p)
		if mode == "" || mode == "UNSET" {
			continue
		}
		sel, hasSel, _ := selector(p.Spec)
		switch {
		case p.Metadata.Namespace == pod.Namespace && hasSel && labelsMatch(sel, pod.Labels):
			workload = mode
		case p.Metadata.Namespace == pod.Namespace && !hasSel:
			namespace = mode
		case p.Metadata.Namespace == RootNamespace && !hasSel:
			mesh = mode
		}
	}
	for _, m := range []string{workload, namespace, mesh} {
		if m != "" {
			return m
		}
	}
	return "PERMISSIVE"
}

// convertAuthz converts an L4 AuthorizationPolicy as istiod does for
// ztunnel: each rule is a group; its `from` entries form one Rules (ORed
// matches), its `to` entries another; the group ANDs them.
func convertAuthz(p *policyObject) (*security.Authorization, map[string]string, error) {
	a := &security.Authorization{Name: p.Metadata.Name, Namespace: p.Metadata.Namespace}
	if p.Metadata.Annotations["istio.io/dry-run"] == "true" {
		a.DryRun = true
	}
	sel, hasSel, err := selector(p.Spec)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case hasSel:
		a.Scope = security.Scope_WORKLOAD_SELECTOR
	case a.Namespace == RootNamespace:
		a.Scope = security.Scope_GLOBAL
	default:
		a.Scope = security.Scope_NAMESPACE
	}
	for k := range p.Spec {
		switch k {
		case "selector", "action", "rules":
		default:
			return nil, nil, fmt.Errorf("spec.%s is not supported in local mode", k)
		}
	}
	switch act, _ := p.Spec["action"].(string); act {
	case "", "ALLOW":
		a.Action = security.Action_ALLOW
	case "DENY":
		a.Action = security.Action_DENY
	default:
		return nil, nil, fmt.Errorf("spec.action %q is not supported at L4; use ALLOW or DENY", act)
	}
	rules, _ := p.Spec["rules"].([]any)
	for i, r := range rules {
		g, err := convertRule(r)
		if err != nil {
			return nil, nil, fmt.Errorf("spec.rules[%d].%v", i, err)
		}
		a.Groups = append(a.Groups, g)
	}
	return a, sel, nil
}

func convertRule(raw any) (*security.Group, error) {
	rule, _ := raw.(map[string]any)
	g := &security.Group{}
	for k := range rule {
		if k != "from" && k != "to" {
			return nil, fmt.Errorf("%s is not supported in local mode (only from and to)", k)
		}
	}
	if from, _ := rule["from"].([]any); len(from) > 0 {
		r := &security.Rules{}
		for i, f := range from {
			src, _ := f.(map[string]any)
			for k := range src {
				if k != "source" {
					return nil, fmt.Errorf("from[%d].%s is not supported", i, k)
				}
			}
			m, err := sourceMatch(src["source"])
			if err != nil {
				return nil, fmt.Errorf("from[%d].source.%v", i, err)
			}
			r.Matches = append(r.Matches, m)
		}
		g.Rules = append(g.Rules, r)
	}
	if to, _ := rule["to"].([]any); len(to) > 0 {
		r := &security.Rules{}
		for i, e := range to {
			op, _ := e.(map[string]any)
			for k := range op {
				if k != "operation" {
					return nil, fmt.Errorf("to[%d].%s is not supported", i, k)
				}
			}
			m, err := operationMatch(op["operation"])
			if err != nil {
				return nil, fmt.Errorf("to[%d].operation.%v", i, err)
			}
			r.Matches = append(r.Matches, m)
		}
		g.Rules = append(g.Rules, r)
	}
	return g, nil
}

func stringList(v any, field string) ([]string, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%s: want a list", field)
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		switch e := e.(type) {
		case string:
			out = append(out, e)
		case float64:
			out = append(out, strconv.FormatFloat(e, 'f', -1, 64))
		case json.Number:
			out = append(out, e.String())
		default:
			return nil, fmt.Errorf("%s: %v is not a string", field, e)
		}
	}
	return out, nil
}

func sourceMatch(raw any) (*security.Match, error) {
	src, _ := raw.(map[string]any)
	m := &security.Match{}
	for k, v := range src {
		vals, err := stringList(v, k)
		if err != nil {
			return nil, err
		}
		switch k {
		case "principals":
			m.Principals = stringMatches(vals)
		case "notPrincipals":
			m.NotPrincipals = stringMatches(vals)
		case "namespaces":
			m.Namespaces = stringMatches(vals)
		case "notNamespaces":
			m.NotNamespaces = stringMatches(vals)
		case "ipBlocks", "notIpBlocks":
			addrs, err := addresses(vals)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", k, err)
			}
			if k == "ipBlocks" {
				m.SourceIps = addrs
			} else {
				m.NotSourceIps = addrs
			}
		default:
			return nil, fmt.Errorf("%s is not supported at L4 (it needs a waypoint)", k)
		}
	}
	return m, nil
}

func operationMatch(raw any) (*security.Match, error) {
	op, _ := raw.(map[string]any)
	m := &security.Match{}
	for k, v := range op {
		vals, err := stringList(v, k)
		if err != nil {
			return nil, err
		}
		switch k {
		case "ports", "notPorts":
			var ports []uint32
			for _, s := range vals {
				n, err := strconv.ParseUint(s, 10, 16)
				if err != nil || n == 0 {
					return nil, fmt.Errorf("%s: %q is not a port", k, s)
				}
				ports = append(ports, uint32(n))
			}
			if k == "ports" {
				m.DestinationPorts = ports
			} else {
				m.NotDestinationPorts = ports
			}
		default:
			return nil, fmt.Errorf("%s is not supported at L4 (it needs a waypoint)", k)
		}
	}
	return m, nil
}

// stringMatches converts Istio's string syntax: "*" any non-empty value,
// "x*" prefix, "*x" suffix, else exact.
func stringMatches(vals []string) []*security.StringMatch {
	out := make([]*security.StringMatch, 0, len(vals))
	for _, v := range vals {
		var sm *security.StringMatch
		switch {
		case v == "*":
			sm = &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
		case strings.HasSuffix(v, "*"):
			sm = &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: strings.TrimSuffix(v, "*")}}
		case strings.HasPrefix(v, "*"):
			sm = &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: strings.TrimPrefix(v, "*")}}
		default:
			sm = &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: v}}
		}
		out = append(out, sm)
	}
	return out
}

func addresses(vals []string) ([]*security.Address, error) {
	var out []*security.Address
	for _, v := range vals {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			ip, err2 := netip.ParseAddr(v)
			if err2 != nil {
				return nil, fmt.Errorf("%q is neither a CIDR nor an IP", v)
			}
			p = netip.PrefixFrom(ip, ip.BitLen())
		}
		p = p.Masked()
		out = append(out, &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())})
	}
	return out, nil
}
