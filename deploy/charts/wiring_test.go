package charts

import (
	"net"
	"path"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/pkg/zds"
)

// argValue returns the value of --name=value in args.
func argValue(t *testing.T, who string, args []string, name string) string {
	t.Helper()
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	t.Fatalf("%s has no --%s (args %v)", who, name, args)
	return ""
}

// hostPathOf returns the host path behind the container's mount that
// holds file, and file's path relative to the mount.
func hostPathOf(t *testing.T, spec corev1.PodSpec, c corev1.Container, file string) string {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if rel, ok := strings.CutPrefix(file, m.MountPath+"/"); ok {
			v := volume(t, spec, m.Name)
			if v.HostPath == nil {
				t.Fatalf("%s's %s is not on a host path", c.Name, file)
			}
			return path.Join(v.HostPath.Path, rel)
		}
	}
	t.Fatalf("%s mounts nothing holding %s", c.Name, file)
	return ""
}

// TestWiring checks, for every values case, that the components' settings
// agree: each value one side sends is what the other expects.
func TestWiring(t *testing.T) {
	for _, c := range renderCases {
		t.Run(c.name, func(t *testing.T) {
			r := renderObjects(t, c.name, c.namespace)
			istiod := r.deployments["istiod"]
			zt, agentDS := r.daemonSets["ztunnel"], r.daemonSets["cni-agent"]
			ispec, zspec, aspec := istiod.Spec.Template.Spec, zt.Spec.Template.Spec, agentDS.Spec.Template.Spec
			ic, zc, ac := container(t, ispec, "discovery"), container(t, zspec, "ztunnel"), container(t, aspec, "cni-agent")
			var svc *corev1.Service
			for _, o := range r.all {
				if s, ok := o.(*corev1.Service); ok && s.Name == "istiod" {
					svc = s
				}
			}
			if svc == nil {
				t.Fatal("no istiod Service")
			}

			// ztunnel reaches istiod's Service on its gRPC port and verifies
			// a name istiod's serving certificate holds.
			host, port, err := net.SplitHostPort(argValue(t, "ztunnel", zc.Args, "ca-addr"))
			if err != nil {
				t.Fatal(err)
			}
			if want := svc.Name + "." + svc.Namespace + ".svc"; host != want {
				t.Errorf("ztunnel --ca-addr host %s, want the istiod Service %s", host, want)
			}
			if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == 15012 && p.TargetPort.IntValue() == 15012 }) || port != "15012" {
				t.Errorf("ztunnel dials port %s; the istiod Service serves %v", port, svc.Spec.Ports)
			}
			if _, gport, _ := net.SplitHostPort(argValue(t, "istiod", ic.Args, "grpc-addr")); gport != "15012" {
				t.Errorf("istiod --grpc-addr port %s, want 15012", gport)
			}
			serving := strings.Split(argValue(t, "istiod", ic.Args, "serving-dns"), ",")
			if name := argValue(t, "ztunnel", zc.Args, "ca-server-name"); !slices.Contains(serving, name) {
				t.Errorf("ztunnel verifies %s; istiod serves %v", name, serving)
			}
			if a, b := argValue(t, "ztunnel", zc.Args, "trust-domain"), argValue(t, "istiod", ic.Args, "trust-domain"); a != b {
				t.Errorf("trust domains differ: ztunnel %s, istiod %s", a, b)
			}
			if got, want := argValue(t, "istiod", ic.Args, "ztunnel-sa"), zt.Namespace+"/"+zspec.ServiceAccountName; got != want {
				t.Errorf("istiod --ztunnel-sa %s, want ztunnel's %s", got, want)
			}
			// ztunnel's token is for an audience istiod accepts.
			aud := volume(t, zspec, "istio-token").Projected.Sources[0].ServiceAccountToken.Audience
			if !slices.Contains(strings.Split(argValue(t, "istiod", ic.Args, "token-audiences"), ","), aud) {
				t.Errorf("ztunnel's token audience %s is not among istiod's --token-audiences", aud)
			}
			// ztunnel's root: the ConfigMap istiod publishes, key root-cert.pem.
			caRoot := argValue(t, "ztunnel", zc.Args, "ca-root")
			if m := mount(t, zc, path.Dir(caRoot)); volume(t, zspec, m.Name).ConfigMap == nil || path.Base(caRoot) != "root-cert.pem" {
				t.Errorf("ztunnel --ca-root %s is not root-cert.pem of the istio-ca-root-cert ConfigMap", caRoot)
			}

			// The ZDS socket: the same host file for the agent (server) and
			// ztunnel (client).
			za, aa := argValue(t, "ztunnel", zc.Args, "zds-socket"), argValue(t, "cni-agent", ac.Args, "zds-socket")
			if zh, ah := hostPathOf(t, zspec, zc, za), hostPathOf(t, aspec, ac, aa); zh != ah {
				t.Errorf("ZDS socket: ztunnel dials host %s, the agent serves host %s", zh, ah)
			}
			// The plugin, on the host, dials the agent's socket at its
			// default path (the installed conflist names no other).
			if h := hostPathOf(t, aspec, ac, argValue(t, "cni-agent", ac.Args, "agent-socket")); h != agentapi.DefaultSocketPath {
				t.Errorf("the agent's socket is host %s; the ambit-cni plugin dials %s", h, agentapi.DefaultSocketPath)
			}
			if za != zds.DefaultSocketPath {
				t.Errorf("ZDS socket %s, want ztunnel's default %s", za, zds.DefaultSocketPath)
			}

			// Probes hit the addresses the binaries serve them on.
			probe := func(who string, ctr corev1.Container, flag string) {
				_, p, _ := net.SplitHostPort(argValue(t, who, ctr.Args, flag))
				if ctr.ReadinessProbe == nil || ctr.ReadinessProbe.HTTPGet == nil || ctr.ReadinessProbe.HTTPGet.Port.String() != p {
					t.Errorf("%s's readiness probe %+v does not use --%s port %s", who, ctr.ReadinessProbe, flag, p)
				}
			}
			probe("istiod", ic, "readiness-addr")
			probe("ztunnel", zc, "readiness-addr")
			probe("cni-agent", ac, "health-addr")

			// istiod's self-signed root Secret is the one its Role names.
			caSecret := argValue(t, "istiod", ic.Args, "ca-secret")
			if role := r.nsRoles["istiod"]; !slices.ContainsFunc(role.Rules, func(rule rbacv1.PolicyRule) bool { return slices.Contains(rule.ResourceNames, caSecret) }) {
				t.Errorf("istiod's Role does not name its --ca-secret %s", caSecret)
			}
			if got, want := argValue(t, "cni-agent", ac.Args, "daemonset"), agentDS.Namespace+"/"+agentDS.Name; got != want {
				t.Errorf("cni-agent --daemonset %s, want %s", got, want)
			}
		})
	}
}
