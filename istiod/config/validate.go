package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// defaultAndValidate applies the API server's defaults to obj and checks the
// fields the ambient index reads. It returns the path of the first bad field.
func defaultAndValidate(obj Object) (string, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return pod(o)
	case *corev1.Service:
		return service(o)
	case *securityv1.AuthorizationPolicy:
		return authorizationPolicy(o)
	case *securityv1.PeerAuthentication:
		return peerAuthentication(o)
	}
	return "", nil
}

func pod(p *corev1.Pod) (string, error) {
	if p.Spec.ServiceAccountName == "" {
		p.Spec.ServiceAccountName = p.Spec.DeprecatedServiceAccount
	}
	if p.Spec.ServiceAccountName == "" {
		p.Spec.ServiceAccountName = "default"
	}
	for _, cs := range []struct {
		path string
		cs   []corev1.Container
	}{{"spec.containers", p.Spec.Containers}, {"spec.initContainers", p.Spec.InitContainers}} {
		for i := range cs.cs {
			for j := range cs.cs[i].Ports {
				cp := &cs.cs[i].Ports[j]
				path := fmt.Sprintf("%s[%d].ports[%d]", cs.path, i, j)
				if cp.Protocol == "" {
					cp.Protocol = corev1.ProtocolTCP
				}
				if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
					return path + ".containerPort", fmt.Errorf("%d is not a port number (1-65535)", cp.ContainerPort)
				}
			}
		}
	}
	if p.Status.PodIP != "" {
		if _, err := netip.ParseAddr(p.Status.PodIP); err != nil {
			return "status.podIP", fmt.Errorf("%q is not an IP address", p.Status.PodIP)
		}
	}
	for i, ip := range p.Status.PodIPs {
		if _, err := netip.ParseAddr(ip.IP); err != nil {
			return fmt.Sprintf("status.podIPs[%d].ip", i), fmt.Errorf("%q is not an IP address", ip.IP)
		}
	}
	if len(p.Status.PodIPs) > 0 && p.Status.PodIP != "" && p.Status.PodIPs[0].IP != p.Status.PodIP {
		return "status.podIP", fmt.Errorf("%q must equal status.podIPs[0].ip %q", p.Status.PodIP, p.Status.PodIPs[0].IP)
	}
	if len(p.Status.PodIPs) == 0 && p.Status.PodIP != "" {
		p.Status.PodIPs = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	return "", nil
}

func service(s *corev1.Service) (string, error) {
	for i := range s.Spec.Ports {
		sp := &s.Spec.Ports[i]
		path := fmt.Sprintf("spec.ports[%d]", i)
		if sp.Protocol == "" {
			sp.Protocol = corev1.ProtocolTCP
		}
		if sp.Port < 1 || sp.Port > 65535 {
			return path + ".port", fmt.Errorf("%d is not a port number (1-65535)", sp.Port)
		}
		switch {
		case sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal == 0:
			sp.TargetPort = intstr.FromInt32(sp.Port)
		case sp.TargetPort.Type == intstr.Int && (sp.TargetPort.IntVal < 1 || sp.TargetPort.IntVal > 65535):
			return path + ".targetPort", fmt.Errorf("%d is not a port number (1-65535)", sp.TargetPort.IntVal)
		case sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal == "":
			return path + ".targetPort", fmt.Errorf("an empty name; give a container port name or number")
		}
	}
	if s.Spec.ClusterIP != "" && s.Spec.ClusterIP != corev1.ClusterIPNone {
		if _, err := netip.ParseAddr(s.Spec.ClusterIP); err != nil {
			return "spec.clusterIP", fmt.Errorf("%q is not an IP address or %q", s.Spec.ClusterIP, corev1.ClusterIPNone)
		}
	}
	for i, ip := range s.Spec.ClusterIPs {
		if ip == corev1.ClusterIPNone {
			continue
		}
		if _, err := netip.ParseAddr(ip); err != nil {
			return fmt.Sprintf("spec.clusterIPs[%d]", i), fmt.Errorf("%q is not an IP address or %q", ip, corev1.ClusterIPNone)
		}
	}
	if len(s.Spec.ClusterIPs) > 0 && s.Spec.ClusterIP != "" && s.Spec.ClusterIPs[0] != s.Spec.ClusterIP {
		return "spec.clusterIP", fmt.Errorf("%q must equal spec.clusterIPs[0] %q", s.Spec.ClusterIP, s.Spec.ClusterIPs[0])
	}
	return "", nil
}

func authorizationPolicy(ap *securityv1.AuthorizationPolicy) (string, error) {
	spec := &ap.Spec
	if spec.GetSelector() != nil && (spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0) {
		return "spec.selector", fmt.Errorf("set either selector or targetRef(s), not both")
	}
	for i, r := range spec.GetRules() {
		rp := fmt.Sprintf("spec.rules[%d]", i)
		for j, f := range r.GetFrom() {
			fp := fmt.Sprintf("%s.from[%d].source", rp, j)
			s := f.GetSource()
			if s == nil {
				return fp, fmt.Errorf("a from entry needs a source")
			}
			for _, l := range []struct {
				name string
				v    []string
			}{{"ipBlocks", s.GetIpBlocks()}, {"notIpBlocks", s.GetNotIpBlocks()}, {"remoteIpBlocks", s.GetRemoteIpBlocks()}, {"notRemoteIpBlocks", s.GetNotRemoteIpBlocks()}} {
				for k, v := range l.v {
					if err := checkIPBlock(v); err != nil {
						return fmt.Sprintf("%s.%s[%d]", fp, l.name, k), err
					}
				}
			}
		}
		for j, t := range r.GetTo() {
			tp := fmt.Sprintf("%s.to[%d].operation", rp, j)
			op := t.GetOperation()
			if op == nil {
				return tp, fmt.Errorf("a to entry needs an operation")
			}
			for _, l := range []struct {
				name string
				v    []string
			}{{"ports", op.GetPorts()}, {"notPorts", op.GetNotPorts()}} {
				for k, v := range l.v {
					if err := checkPort(v); err != nil {
						return fmt.Sprintf("%s.%s[%d]", tp, l.name, k), err
					}
				}
			}
		}
		for j, w := range r.GetWhen() {
			wp := fmt.Sprintf("%s.when[%d]", rp, j)
			if w.GetKey() == "" {
				return wp + ".key", fmt.Errorf("a condition needs a key")
			}
			if len(w.GetValues()) == 0 && len(w.GetNotValues()) == 0 {
				return wp, fmt.Errorf("a condition needs values or notValues")
			}
			var check func(string) error
			switch w.GetKey() {
			case "source.ip", "destination.ip", "remote.ip":
				check = checkIPBlock
			case "destination.port":
				check = checkPort
			default:
				continue
			}
			for _, l := range []struct {
				name string
				v    []string
			}{{"values", w.GetValues()}, {"notValues", w.GetNotValues()}} {
				for k, v := range l.v {
					if err := check(v); err != nil {
						return fmt.Sprintf("%s.%s[%d]", wp, l.name, k), err
					}
				}
			}
		}
	}
	return "", nil
}

func peerAuthentication(pa *securityv1.PeerAuthentication) (string, error) {
	spec := &pa.Spec
	if len(spec.GetPortLevelMtls()) > 0 && len(spec.GetSelector().GetMatchLabels()) == 0 {
		return "spec.portLevelMtls", fmt.Errorf("portLevelMtls needs a workload selector (spec.selector.matchLabels)")
	}
	for port := range spec.GetPortLevelMtls() {
		if port < 1 || port > 65535 {
			return fmt.Sprintf("spec.portLevelMtls[%d]", port), fmt.Errorf("%d is not a port number (1-65535)", port)
		}
	}
	return "", nil
}

func checkPort(s string) error {
	p, err := strconv.ParseUint(s, 10, 32)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q is not a port number (1-65535)", s)
	}
	return nil
}

func checkIPBlock(s string) error {
	if strings.Contains(s, "/") {
		if _, err := netip.ParsePrefix(s); err != nil {
			return fmt.Errorf("%q is not a CIDR block (e.g. 10.0.0.0/8)", s)
		}
		return nil
	}
	if _, err := netip.ParseAddr(s); err != nil {
		return fmt.Errorf("%q is not an IP address or CIDR block", s)
	}
	return nil
}
