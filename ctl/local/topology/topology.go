package topology

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
)

// Labels of DESIGN.md section 2.
const (
	LabelDataplaneMode = "istio.io/dataplane-mode"
	ModeAmbient        = "ambient"
	ModeNone           = "none"
	LabelUseWaypoint   = "istio.io/use-waypoint"
)

// Limits that keep a local mesh within one machine.
const (
	MaxNodes = 16
	MaxPods  = 250
)

// Topology is one local mesh.
type Topology struct {
	// TrustDomain of every identity; default cluster.local.
	TrustDomain string      `json:"trustDomain,omitempty"`
	Nodes       []Node      `json:"nodes"`
	Namespaces  []Namespace `json:"namespaces,omitempty"`
	Pods        []Pod       `json:"pods,omitempty"`
	Services    []Service   `json:"services,omitempty"`
	// Policies are Kubernetes objects (AuthorizationPolicy,
	// PeerAuthentication) kept verbatim for the control plane.
	Policies []map[string]any `json:"policies,omitempty"`
}

// Node is a simulated Kubernetes node.
type Node struct {
	Name string `json:"name"`
}

// Namespace carries the labels enrollment reads.
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Pod is a workload in its own network namespace.
type Pod struct {
	Name           string            `json:"name"`
	Namespace      string            `json:"namespace"`
	Node           string            `json:"node"`
	ServiceAccount string            `json:"serviceAccount,omitempty"` // default "default"
	Labels         map[string]string `json:"labels,omitempty"`
	// Run is the command started inside the pod's network namespace; empty
	// runs nothing. "{{name}}" is replaced by the pod name.
	Run []string `json:"run,omitempty"`
}

// Key is namespace/name.
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

// Service is a ClusterIP service.
type Service struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	VIP       string            `json:"vip"`
	Selector  map[string]string `json:"selector"`
	Ports     []ServicePort     `json:"ports"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// Hostname is the service's cluster DNS name.
func (s Service) Hostname() string { return s.Name + "." + s.Namespace + ".svc.cluster.local" }

// ServicePort maps a service port to a pod port.
type ServicePort struct {
	Name       string `json:"name,omitempty"`
	Port       uint16 `json:"port"`
	TargetPort uint16 `json:"targetPort,omitempty"` // default: Port
	Protocol   string `json:"protocol,omitempty"`   // TCP (default), HTTP, HTTP2, GRPC
}

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid topology")

// Load reads and validates a topology file.
func Load(path string) (*Topology, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading topology: %w", err)
	}
	t, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Parse decodes YAML (or JSON), applies defaults and validates. Unknown
// fields are errors, so a typo does not silently drop a setting.
func Parse(b []byte) (*Topology, error) {
	var t Topology
	if err := yaml.UnmarshalStrict(b, &t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	t.defaults()
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

func (t *Topology) defaults() {
	if t.TrustDomain == "" {
		t.TrustDomain = "cluster.local"
	}
	for i := range t.Pods {
		if t.Pods[i].ServiceAccount == "" {
			t.Pods[i].ServiceAccount = "default"
		}
	}
	for i := range t.Services {
		for j := range t.Services[i].Ports {
			p := &t.Services[i].Ports[j]
			if p.TargetPort == 0 {
				p.TargetPort = p.Port
			}
			if p.Protocol == "" {
				p.Protocol = "TCP"
			}
		}
	}
}

// Validate reports every problem, each with its path and the fix.
func (t *Topology) Validate() error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrInvalid, path, fmt.Sprintf(format, args...)))
	}
	if err := spiffe.ValidateTrustDomain(t.TrustDomain); err != nil {
		bad("trustDomain", "%v", err)
	}
	if len(t.Nodes) == 0 {
		bad("nodes", "at least one node is required")
	}
	if len(t.Nodes) > MaxNodes {
		bad("nodes", "%d nodes; at most %d are supported in local mode", len(t.Nodes), MaxNodes)
	}
	if len(t.Pods) > MaxPods {
		bad("pods", "%d pods; at most %d are supported in local mode", len(t.Pods), MaxPods)
	}
	nodes := map[string]bool{}
	for i, n := range t.Nodes {
		p := fmt.Sprintf("nodes[%d].name", i)
		if err := dnsLabel(n.Name, 20); err != nil {
			bad(p, "%v", err)
		}
		if nodes[n.Name] {
			bad(p, "duplicate node %q", n.Name)
		}
		nodes[n.Name] = true
	}
	nss := map[string]bool{}
	for i, ns := range t.Namespaces {
		p := fmt.Sprintf("namespaces[%d]", i)
		if err := dnsLabel(ns.Name, 63); err != nil {
			bad(p+".name", "%v", err)
		}
		if nss[ns.Name] {
			bad(p+".name", "duplicate namespace %q", ns.Name)
		}
		nss[ns.Name] = true
		if v, ok := ns.Labels[LabelDataplaneMode]; ok && v != ModeAmbient && v != ModeNone {
			bad(p+".labels", "%s=%q; use %q or %q", LabelDataplaneMode, v, ModeAmbient, ModeNone)
		}
	}
	pods := map[string]bool{}
	for i, pod := range t.Pods {
		p := fmt.Sprintf("pods[%d]", i)
		if err := dnsLabel(pod.Name, 63); err != nil {
			bad(p+".name", "%v", err)
		}
		if !nss[pod.Namespace] {
			bad(p+".namespace", "namespace %q is not declared under namespaces", pod.Namespace)
		}
		if !nodes[pod.Node] {
			bad(p+".node", "node %q is not declared under nodes", pod.Node)
		}
		if err := dnsLabel(pod.ServiceAccount, 63); err != nil {
			bad(p+".serviceAccount", "%v", err)
		}
		if pods[pod.Key()] {
			bad(p+".name", "duplicate pod %s", pod.Key())
		}
		pods[pod.Key()] = true
		if v, ok := pod.Labels[LabelDataplaneMode]; ok && v != ModeAmbient && v != ModeNone {
			bad(p+".labels", "%s=%q; use %q or %q", LabelDataplaneMode, v, ModeAmbient, ModeNone)
		}
	}
	svcs := map[string]bool{}
	vips := map[netip.Addr]string{}
	for i, s := range t.Services {
		p := fmt.Sprintf("services[%d]", i)
		if err := dnsLabel(s.Name, 63); err != nil {
			bad(p+".name", "%v", err)
		}
		if !nss[s.Namespace] {
			bad(p+".namespace", "namespace %q is not declared under namespaces", s.Namespace)
		}
		key := s.Namespace + "/" + s.Name
		if svcs[key] {
			bad(p+".name", "duplicate service %s", key)
		}
		svcs[key] = true
		vip, err := netip.ParseAddr(s.VIP)
		switch {
		case err != nil:
			bad(p+".vip", "%q is not an IP address", s.VIP)
		case !ServiceCIDR.Contains(vip):
			bad(p+".vip", "%s is outside the local service range %s", vip, ServiceCIDR)
		case vips[vip] != "":
			bad(p+".vip", "%s is already used by service %s", vip, vips[vip])
		default:
			vips[vip] = key
		}
		if len(s.Selector) == 0 {
			bad(p+".selector", "a selector is required (e.g. app: %s)", s.Name)
		}
		if len(s.Ports) == 0 {
			bad(p+".ports", "at least one port is required")
		}
		seen := map[uint16]bool{}
		for j, sp := range s.Ports {
			pp := fmt.Sprintf("%s.ports[%d]", p, j)
			if sp.Port == 0 {
				bad(pp+".port", "port must be 1-65535")
			}
			if seen[sp.Port] {
				bad(pp+".port", "duplicate port %d", sp.Port)
			}
			seen[sp.Port] = true
			switch strings.ToUpper(sp.Protocol) {
			case "TCP", "HTTP", "HTTP2", "GRPC":
			default:
				bad(pp+".protocol", "%q; use TCP, HTTP, HTTP2 or GRPC", sp.Protocol)
			}
		}
	}
	for i, pol := range t.Policies {
		p := fmt.Sprintf("policies[%d]", i)
		kind, _ := pol["kind"].(string)
		if kind != "AuthorizationPolicy" && kind != "PeerAuthentication" {
			bad(p+".kind", "%q; local mode takes AuthorizationPolicy and PeerAuthentication", kind)
		}
		md, _ := pol["metadata"].(map[string]any)
		if name, _ := md["name"].(string); name == "" {
			bad(p+".metadata.name", "a name is required")
		}
	}
	return errors.Join(errs...)
}

// dnsLabel checks a Kubernetes DNS label of at most max characters.
func dnsLabel(s string, max int) error {
	if s == "" {
		return errors.New("empty name")
	}
	if len(s) > max {
		return fmt.Errorf("%q is longer than %d characters", s, max)
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(s)-1
		if !ok {
			return fmt.Errorf("%q is not a DNS label (lowercase letters, digits and '-')", s)
		}
	}
	return nil
}

// ServiceCIDR is where local-mode service VIPs live.
var ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")

// Namespace returns the namespace named name, or the zero value.
func (t *Topology) Namespace(name string) Namespace {
	for _, ns := range t.Namespaces {
		if ns.Name == name {
			return ns
		}
	}
	return Namespace{}
}

// Enrolled reports whether pod is in the ambient mesh: a pod label
// dataplane-mode=none opts out; a pod label =ambient opts in; otherwise the
// namespace label decides.
func (t *Topology) Enrolled(pod Pod) bool {
	if v, ok := pod.Labels[LabelDataplaneMode]; ok {
		return v == ModeAmbient
	}
	return t.Namespace(pod.Namespace).Labels[LabelDataplaneMode] == ModeAmbient
}

// Identity returns the pod's SPIFFE identity.
func (t *Topology) Identity(pod Pod) spiffe.ID {
	return spiffe.ID{TrustDomain: t.TrustDomain, Namespace: pod.Namespace, ServiceAccount: pod.ServiceAccount}
}

// Selects reports whether a service's selector matches the pod.
func (s Service) Selects(pod Pod) bool {
	if pod.Namespace != s.Namespace || len(s.Selector) == 0 {
		return false
	}
	for k, v := range s.Selector {
		if pod.Labels[k] != v {
			return false
		}
	}
	return true
}

// NodeIndex returns the position of the node (its subnet number), or -1.
func (t *Topology) NodeIndex(name string) int {
	for i, n := range t.Nodes {
		if n.Name == name {
			return i
		}
	}
	return -1
}

// PodsOn returns the pods of a node, sorted by key.
func (t *Topology) PodsOn(node string) []Pod {
	var out []Pod
	for _, p := range t.Pods {
		if p.Node == node {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}
