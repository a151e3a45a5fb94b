package policy

import (
	"fmt"
	"net/netip"
	"strings"

	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// Conn is what L4 authorization knows about a connection.
type Conn struct {
	// SourceIdentity is the peer's verified SPIFFE ID; nil for plaintext.
	SourceIdentity *spiffe.ID
	SourceIP       netip.Addr
	DestIP         netip.Addr
	DestPort       uint16
}

// Result is the outcome of Evaluate.
type Result struct {
	Allow bool
	// Reason is a short sentence for logs, naming the deciding policy.
	Reason string
	// Matched is the "namespace/name" of the policy that decided, empty when
	// no policy did (no ALLOW policy applies, or none matched).
	Matched string
	// Audits lists, as "namespace/name", the dry-run policies that matched.
	// They do not affect Allow; the caller logs them.
	Audits []string
}

// Key returns a policy's resource name, "namespace/name".
func Key(p *security.Authorization) string {
	return p.GetNamespace() + "/" + p.GetName()
}

// Evaluate decides whether conn is allowed by the policies that apply to
// its destination workload. Nil entries are ignored. The first matching
// policy in slice order is the one reported in Matched.
func Evaluate(policies []*security.Authorization, conn Conn) Result {
	c := newConnView(conn)
	var res Result
	var denied, allowed *security.Authorization
	allowApplies := 0
	for _, p := range policies {
		if p == nil {
			continue
		}
		if p.GetDryRun() {
			if matches(p, c) {
				res.Audits = append(res.Audits, Key(p))
			}
			continue
		}
		if p.GetAction() == security.Action_ALLOW {
			allowApplies++
			if allowed == nil && matches(p, c) {
				allowed = p
			}
			continue
		}
		// DENY, and any action we do not know (fail safe).
		if denied == nil && matches(p, c) {
			denied = p
		}
	}
	switch {
	case denied != nil:
		res.Matched = Key(denied)
		res.Reason = fmt.Sprintf("denied by DENY policy %s", res.Matched)
		if denied.GetAction() != security.Action_DENY {
			res.Reason = fmt.Sprintf("denied by policy %s with unknown action %d (treated as DENY)", res.Matched, denied.GetAction())
		}
	case allowApplies == 0:
		res.Allow = true
		res.Reason = "allowed: no ALLOW policy applies to the workload"
	case allowed != nil:
		res.Allow = true
		res.Matched = Key(allowed)
		res.Reason = fmt.Sprintf("allowed by ALLOW policy %s", res.Matched)
	default:
		res.Reason = fmt.Sprintf("denied: none of the %d ALLOW policies applying to the workload matched", allowApplies)
	}
	return res
}

// Matches reports whether one policy's rules match conn, ignoring its
// action and dry-run flag.
func Matches(p *security.Authorization, conn Conn) bool {
	return matches(p, newConnView(conn))
}

// connView is Conn with the strings the matchers compare, computed once.
type connView struct {
	Conn
	principal string // "<td>/ns/<ns>/sa/<sa>", empty for plaintext
	namespace string
}

func newConnView(c Conn) connView {
	v := connView{Conn: c}
	v.SourceIP = c.SourceIP.Unmap()
	v.DestIP = c.DestIP.Unmap()
	if id := c.SourceIdentity; id != nil && !id.IsZero() {
		v.principal = strings.TrimPrefix(id.String(), spiffe.Scheme+"://")
		v.namespace = id.Namespace
	}
	return v
}

func matches(p *security.Authorization, c connView) bool {
	deny := p.GetAction() != security.Action_ALLOW
	for _, g := range p.GetGroups() {
		if groupMatches(g, c, deny) {
			return true
		}
	}
	return false
}

func groupMatches(g *security.Group, c connView, deny bool) bool {
	for _, r := range g.GetRules() {
		if !rulesMatch(r, c, deny) {
			return false
		}
	}
	return true
}

func rulesMatch(r *security.Rules, c connView, deny bool) bool {
	ms := r.GetMatches()
	if len(ms) == 0 {
		return true
	}
	for _, m := range ms {
		if isEmpty(m) {
			if deny {
				return true
			}
			continue
		}
		if matchMatches(m, c) {
			return true
		}
	}
	return false
}

func isEmpty(m *security.Match) bool {
	return len(m.GetNamespaces()) == 0 && len(m.GetNotNamespaces()) == 0 &&
		len(m.GetServiceAccounts()) == 0 && len(m.GetNotServiceAccounts()) == 0 &&
		len(m.GetPrincipals()) == 0 && len(m.GetNotPrincipals()) == 0 &&
		len(m.GetSourceIps()) == 0 && len(m.GetNotSourceIps()) == 0 &&
		len(m.GetDestinationIps()) == 0 && len(m.GetNotDestinationIps()) == 0 &&
		len(m.GetDestinationPorts()) == 0 && len(m.GetNotDestinationPorts()) == 0
}

func matchMatches(m *security.Match, c connView) bool {
	return field(m.GetDestinationIps(), m.GetNotDestinationIps(), func(a *security.Address) bool { return addrContains(a, c.DestIP) }) &&
		field(m.GetSourceIps(), m.GetNotSourceIps(), func(a *security.Address) bool { return addrContains(a, c.SourceIP) }) &&
		field(m.GetDestinationPorts(), m.GetNotDestinationPorts(), func(p uint32) bool { return p == uint32(c.DestPort) }) &&
		field(m.GetServiceAccounts(), m.GetNotServiceAccounts(), func(s *security.ServiceAccountMatch) bool {
			id := c.SourceIdentity
			return c.principal != "" && s.GetNamespace() == id.Namespace && s.GetServiceAccount() == id.ServiceAccount
		}) &&
		field(m.GetPrincipals(), m.GetNotPrincipals(), func(s *security.StringMatch) bool { return identityString(s, c.principal) }) &&
		field(m.GetNamespaces(), m.GetNotNamespaces(), func(s *security.StringMatch) bool { return identityString(s, c.namespace) })
}

// field applies one Match field: any positive entry (when there are any)
// and no negative entry.
func field[T any](pos, neg []T, pred func(T) bool) bool {
	if len(pos) > 0 && !anyOf(pos, pred) {
		return false
	}
	return !anyOf(neg, pred)
}

func anyOf[T any](xs []T, pred func(T) bool) bool {
	for _, x := range xs {
		if pred(x) {
			return true
		}
	}
	return false
}

// identityString matches an attribute of the peer identity; a plaintext
// peer (empty value) matches nothing.
func identityString(s *security.StringMatch, v string) bool {
	if v == "" {
		return false
	}
	return StringMatches(s, v)
}

// StringMatches applies one StringMatch to v. Presence holds for any
// non-empty v; a StringMatch with no match type never holds.
func StringMatches(s *security.StringMatch, v string) bool {
	switch t := s.GetMatchType().(type) {
	case *security.StringMatch_Exact:
		return v == t.Exact
	case *security.StringMatch_Prefix:
		return strings.HasPrefix(v, t.Prefix)
	case *security.StringMatch_Suffix:
		return strings.HasSuffix(v, t.Suffix)
	case *security.StringMatch_Presence:
		return v != ""
	}
	return false
}

// AddrPrefix converts a policy Address to a prefix. It fails when the
// address is not 4 or 16 bytes or the length exceeds its bit length.
func AddrPrefix(a *security.Address) (netip.Prefix, error) {
	ip, ok := netip.AddrFromSlice(a.GetAddress())
	if !ok {
		return netip.Prefix{}, fmt.Errorf("address has %d bytes, want 4 (IPv4) or 16 (IPv6)", len(a.GetAddress()))
	}
	ip = ip.Unmap()
	bits := int(a.GetLength())
	if len(a.GetAddress()) == 16 && ip.Is4() {
		bits -= 96 // IPv4-mapped IPv6 prefix.
	}
	if bits < 0 || bits > ip.BitLen() || a.GetLength() > 128 {
		return netip.Prefix{}, fmt.Errorf("prefix length %d is out of range for %s (0..%d)", a.GetLength(), ip, ip.BitLen())
	}
	return netip.PrefixFrom(ip, bits).Masked(), nil
}

func addrContains(a *security.Address, ip netip.Addr) bool {
	p, err := AddrPrefix(a)
	return err == nil && ip.IsValid() && p.Contains(ip)
}
