package state

import (
	"errors"
	"fmt"
	"strings"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/policy"
)

// ErrInvalid is wrapped by every *ResourceError.
var ErrInvalid = errors.New("invalid resource")

// ResourceError is one rejected resource.
type ResourceError struct {
	Kind  string // "workload", "service" or "policy"
	Name  string // resource name; "#<index>" when it has none
	Field string // protobuf field path, e.g. "addresses[1]"
	Msg   string // what is wrong and how to fix it
}

func (e *ResourceError) Error() string {
	return fmt.Sprintf("%s %s %q: field %s: %s", ErrInvalid, e.Kind, e.Name, e.Field, e.Msg)
}

func (e *ResourceError) Unwrap() error { return ErrInvalid }

type validator struct {
	rootNamespace string
}

// collector accumulates the errors of one resource.
type collector struct {
	kind, name string
	errs       []error
}

func (c *collector) add(field, format string, args ...any) {
	c.errs = append(c.errs, &ResourceError{Kind: c.kind, Name: c.name, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func name(n string, i int) string {
	if n == "" {
		return fmt.Sprintf("#%d", i)
	}
	return n
}

func (v validator) workload(i int, w *workloadapi.Workload, seen map[string]bool) []error {
	c := &collector{kind: "workload", name: name(w.GetUid(), i)}
	if w == nil {
		c.add("", "nil workload")
		return c.errs
	}
	if w.Uid == "" {
		c.add("uid", "empty; every workload needs a unique uid")
	} else if seen[w.Uid] {
		c.add("uid", "duplicate uid in the same write; keep one")
	}
	seen[w.Uid] = true
	if len(w.Addresses) == 0 && w.Hostname == "" {
		c.add("addresses", "neither addresses nor hostname set; set one")
	}
	for j, a := range w.Addresses {
		if len(a) != 4 && len(a) != 16 {
			c.add(fmt.Sprintf("addresses[%d]", j), "%d bytes; want 4 (IPv4) or 16 (IPv6)", len(a))
		}
	}
	if w.TrustDomain != "" {
		if err := spiffe.ValidateTrustDomain(w.TrustDomain); err != nil {
			c.add("trust_domain", "%v", err)
		}
	}
	if _, err := spiffe.New(DefaultTrustDomain, w.Namespace, DefaultServiceAccount); err != nil {
		c.add("namespace", "%v (the namespace is part of the workload's SPIFFE identity)", err)
	}
	if w.ServiceAccount != "" {
		if _, err := spiffe.New(DefaultTrustDomain, "default", w.ServiceAccount); err != nil {
			c.add("service_account", "%v", err)
		}
	}
	if _, ok := workloadapi.TunnelProtocol_name[int32(w.TunnelProtocol)]; !ok {
		c.add("tunnel_protocol", "unknown value %d", w.TunnelProtocol)
	}
	if _, ok := workloadapi.WorkloadStatus_name[int32(w.Status)]; !ok {
		c.add("status", "unknown value %d", w.Status)
	}
	gateway(c, "waypoint", w.Waypoint)
	gateway(c, "network_gateway", w.NetworkGateway)
	for key, pl := range w.Services {
		f := fmt.Sprintf("services[%s]", key)
		if ns, host, ok := strings.Cut(key, "/"); !ok || ns == "" || host == "" {
			c.add(f, "key is not namespace/hostname")
		}
		ports(c, f+".ports", pl.GetPorts())
	}
	for j, key := range w.AuthorizationPolicies {
		if ns, n, ok := strings.Cut(key, "/"); !ok || ns == "" || n == "" {
			c.add(fmt.Sprintf("authorization_policies[%d]", j), "%q is not namespace/name", key)
		}
	}
	return c.errs
}

func (v validator) service(i int, s *workloadapi.Service, seen map[string]bool) []error {
	c := &collector{kind: "service", name: name(strings.Trim(ServiceKey(s), "/"), i)}
	if s == nil {
		c.add("", "nil service")
		return c.errs
	}
	if s.Namespace == "" {
		c.add("namespace", "empty; a service's name is namespace/hostname")
	}
	if s.Hostname == "" {
		c.add("hostname", "empty; a service's name is namespace/hostname")
	}
	if key := ServiceKey(s); seen[key] {
		c.add("hostname", "duplicate service %s in the same write; keep one", key)
	} else {
		seen[key] = true
	}
	for j, na := range s.Addresses {
		networkAddress(c, fmt.Sprintf("addresses[%d]", j), na)
	}
	ports(c, "ports", s.Ports)
	gateway(c, "waypoint", s.Waypoint)
	for j, ww := range s.WeightedWaypoints {
		gateway(c, fmt.Sprintf("weighted_waypoints[%d].destination", j), ww.GetDestination())
	}
	return c.errs
}

func (v validator) policy(i int, p *security.Authorization, seen map[string]bool) []error {
	c := &collector{kind: "policy", name: name(strings.Trim(PolicyKey(p), "/"), i)}
	if p == nil {
		c.add("", "nil policy")
		return c.errs
	}
	if p.Namespace == "" {
		c.add("namespace", "empty; a policy's name is namespace/name")
	}
	if p.Name == "" {
		c.add("name", "empty; a policy's name is namespace/name")
	}
	if key := PolicyKey(p); seen[key] {
		c.add("name", "duplicate policy %s in the same write; keep one", key)
	} else {
		seen[key] = true
	}
	if _, ok := security.Scope_name[int32(p.Scope)]; !ok {
		c.add("scope", "unknown value %d", p.Scope)
	} else if p.Scope == security.Scope_GLOBAL && p.Namespace != v.rootNamespace {
		c.add("scope", "GLOBAL outside the root namespace %s; use NAMESPACE, or set the root namespace to %q", v.rootNamespace, p.Namespace)
	}
	if _, ok := security.Action_name[int32(p.Action)]; !ok {
		c.add("action", "unknown value %d; want ALLOW or DENY", p.Action)
	}
	for gi, g := range p.Groups {
		for ri, r := range g.GetRules() {
			for mi, m := range r.GetMatches() {
				match(c, fmt.Sprintf("groups[%d].rules[%d].matches[%d]", gi, ri, mi), m)
			}
		}
	}
	return c.errs
}

func match(c *collector, f string, m *security.Match) {
	strs := func(name string, ss []*security.StringMatch) {
		for j, s := range ss {
			if s.GetMatchType() == nil {
				c.add(fmt.Sprintf("%s.%s[%d]", f, name, j), "no match type; set exact, prefix, suffix or presence")
			}
		}
	}
	strs("namespaces", m.GetNamespaces())
	strs("not_namespaces", m.GetNotNamespaces())
	strs("principals", m.GetPrincipals())
	strs("not_principals", m.GetNotPrincipals())
	sas := func(name string, ss []*security.ServiceAccountMatch) {
		for j, s := range ss {
			if s.GetNamespace() == "" || s.GetServiceAccount() == "" {
				c.add(fmt.Sprintf("%s.%s[%d]", f, name, j), "namespace and serviceAccount must both be set")
			}
		}
	}
	sas("service_accounts", m.GetServiceAccounts())
	sas("not_service_accounts", m.GetNotServiceAccounts())
	ips := func(name string, as []*security.Address) {
		for j, a := range as {
			if _, err := policy.AddrPrefix(a); err != nil {
				c.add(fmt.Sprintf("%s.%s[%d]", f, name, j), "%v", err)
			}
		}
	}
	ips("source_ips", m.GetSourceIps())
	ips("not_source_ips", m.GetNotSourceIps())
	ips("destination_ips", m.GetDestinationIps())
	ips("not_destination_ips", m.GetNotDestinationIps())
	pts := func(name string, ps []uint32) {
		for j, p := range ps {
			if p < 1 || p > 65535 {
				c.add(fmt.Sprintf("%s.%s[%d]", f, name, j), "port %d out of range 1..65535", p)
			}
		}
	}
	pts("destination_ports", m.GetDestinationPorts())
	pts("not_destination_ports", m.GetNotDestinationPorts())
}

func ports(c *collector, f string, ps []*workloadapi.Port) {
	for j, p := range ps {
		if p.GetServicePort() < 1 || p.GetServicePort() > 65535 {
			c.add(fmt.Sprintf("%s[%d].service_port", f, j), "port %d out of range 1..65535", p.GetServicePort())
		}
		if p.GetTargetPort() > 65535 {
			c.add(fmt.Sprintf("%s[%d].target_port", f, j), "port %d out of range 0..65535 (0 means the service port)", p.GetTargetPort())
		}
	}
}

func networkAddress(c *collector, f string, na *workloadapi.NetworkAddress) {
	n := len(na.GetAddress())
	if n != 4 && n != 16 {
		c.add(f+".address", "%d bytes; want 4 (IPv4) or 16 (IPv6)", n)
		return
	}
	if na.Length != nil && na.GetLength() > uint32(n*8) {
		c.add(f+".length", "prefix length %d longer than the address (%d bits)", na.GetLength(), n*8)
	}
}

func gateway(c *collector, f string, g *workloadapi.GatewayAddress) {
	if g == nil {
		return
	}
	switch d := g.Destination.(type) {
	case *workloadapi.GatewayAddress_Address:
		networkAddress(c, f+".address", d.Address)
	case *workloadapi.GatewayAddress_Hostname:
		if d.Hostname.GetNamespace() == "" || d.Hostname.GetHostname() == "" {
			c.add(f+".hostname", "namespace and hostname must both be set")
		}
	default:
		c.add(f, "neither address nor hostname set")
	}
	if g.HboneMtlsPort > 65535 {
		c.add(f+".hbone_mtls_port", "port %d out of range 1..65535", g.HboneMtlsPort)
	}
}
