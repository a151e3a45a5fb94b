package charts

import (
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// rendered holds one case's objects by kind and name.
type rendered struct {
	daemonSets   map[string]*appsv1.DaemonSet
	deployments  map[string]*appsv1.Deployment
	accounts     map[string]*corev1.ServiceAccount
	roles        []rbacv1.PolicyRule
	bindings     []rbacv1.Subject
	clusterRoles map[string]*rbacv1.ClusterRole
	nsRoles      map[string]*rbacv1.Role
	all          []runtime.Object
}

func renderObjects(t *testing.T, name, namespace string) rendered {
	t.Helper()
	r := rendered{
		daemonSets: map[string]*appsv1.DaemonSet{}, deployments: map[string]*appsv1.Deployment{},
		accounts: map[string]*corev1.ServiceAccount{}, clusterRoles: map[string]*rbacv1.ClusterRole{},
		nsRoles: map[string]*rbacv1.Role{},
	}
	r.all = decodeAll(t, render(t, name, namespace))
	for _, o := range r.all {
		switch o := o.(type) {
		case *appsv1.DaemonSet:
			r.daemonSets[o.Name] = o
		case *appsv1.Deployment:
			r.deployments[o.Name] = o
		case *corev1.ServiceAccount:
			r.accounts[o.Name] = o
		case *rbacv1.ClusterRole:
			r.clusterRoles[o.Name] = o
			r.roles = append(r.roles, o.Rules...)
		case *rbacv1.Role:
			r.nsRoles[o.Name] = o
			r.roles = append(r.roles, o.Rules...)
		case *rbacv1.ClusterRoleBinding:
			r.bindings = append(r.bindings, o.Subjects...)
		case *rbacv1.RoleBinding:
			r.bindings = append(r.bindings, o.Subjects...)
		}
	}
	return r
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return corev1.Container{}
}

func caps(c corev1.Container) (add, drop []string) {
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		return nil, nil
	}
	for _, a := range sc.Capabilities.Add {
		add = append(add, string(a))
	}
	for _, d := range sc.Capabilities.Drop {
		drop = append(drop, string(d))
	}
	return sorted(add), drop
}

func volume(t *testing.T, spec corev1.PodSpec, name string) corev1.Volume {
	t.Helper()
	for _, v := range spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no volume %s", name)
	return corev1.Volume{}
}

func mount(t *testing.T, c corev1.Container, path string) corev1.VolumeMount {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.MountPath == path {
			return m
		}
	}
	t.Fatalf("container %s mounts nothing at %s", c.Name, path)
	return corev1.VolumeMount{}
}

func TestSecurity(t *testing.T) {
	for _, c := range renderCases {
		t.Run(c.name, func(t *testing.T) {
			r := renderObjects(t, c.name, c.namespace)
			checkZtunnel(t, r)
			checkCNIAgent(t, r, c.name)
			checkIstiod(t, r, c.namespace)
			checkEveryContainer(t, r)
		})
	}
}

func checkZtunnel(t *testing.T, r rendered) {
	ds := r.daemonSets["ztunnel"]
	if ds == nil {
		t.Fatal("no ztunnel DaemonSet")
	}
	spec := ds.Spec.Template.Spec
	if spec.HostNetwork {
		t.Error("ztunnel runs in the host network; it must run in its own pod network")
	}
	if spec.HostPID || spec.HostIPC {
		t.Error("ztunnel shares the host PID or IPC namespace")
	}
	zt := container(t, spec, "ztunnel")
	add, drop := caps(zt)
	if want := []string{"NET_ADMIN", "NET_RAW", "SYS_ADMIN"}; !slices.Equal(add, want) {
		t.Errorf("ztunnel capabilities add %v, want exactly %v", add, want)
	}
	if !slices.Equal(drop, []string{"ALL"}) {
		t.Errorf("ztunnel capabilities drop %v, want [ALL]", drop)
	}
	sc := zt.SecurityContext
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("ztunnel's root filesystem is writable")
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("ztunnel priorityClassName %q, want system-node-critical", spec.PriorityClassName)
	}
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil ||
		ru.MaxSurge == nil || ru.MaxSurge.String() != "1" || ru.MaxUnavailable == nil || ru.MaxUnavailable.String() != "0" {
		t.Errorf("ztunnel update strategy %+v, want RollingUpdate maxSurge 1 maxUnavailable 0", ds.Spec.UpdateStrategy)
	}
	// The CA token: projected, audience istio-ca, mounted where --token-file points.
	tok := volume(t, spec, "istio-token")
	if tok.Projected == nil || len(tok.Projected.Sources) != 1 || tok.Projected.Sources[0].ServiceAccountToken == nil ||
		tok.Projected.Sources[0].ServiceAccountToken.Audience != "istio-ca" {
		t.Errorf("ztunnel's istio-token volume %+v, want a projected service account token with audience istio-ca", tok.VolumeSource)
	} else if p := mount(t, zt, "/var/run/secrets/tokens").Name; p != "istio-token" || !slices.Contains(zt.Args, "--token-file=/var/run/secrets/tokens/"+tok.Projected.Sources[0].ServiceAccountToken.Path) {
		t.Errorf("ztunnel's --token-file does not name the projected token (args %v)", zt.Args)
	}
	if root := volume(t, spec, "istiod-ca-cert"); root.ConfigMap == nil || root.ConfigMap.Name != "istio-ca-root-cert" {
		t.Errorf("ztunnel's root certificate volume %+v, want ConfigMap istio-ca-root-cert", root.VolumeSource)
	}
	if hp := volume(t, spec, mount(t, zt, "/var/run/ztunnel").Name).HostPath; hp == nil || hp.Path != "/var/run/ztunnel" {
		t.Errorf("ztunnel's /var/run/ztunnel is not the host's /var/run/ztunnel: %+v", hp)
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil && v.HostPath.Path != "/var/run/ztunnel" {
			t.Errorf("ztunnel mounts host path %s; only /var/run/ztunnel is expected", v.HostPath.Path)
		}
	}
	// No Kubernetes API rights: no binding, no API token.
	for _, s := range r.bindings {
		if s.Kind == rbacv1.ServiceAccountKind && s.Name == spec.ServiceAccountName {
			t.Errorf("a (Cluster)RoleBinding names ztunnel's service account %s", s.Name)
		}
	}
	sa := r.accounts[spec.ServiceAccountName]
	if sa == nil || sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Errorf("ztunnel's service account %q mounts an API token", spec.ServiceAccountName)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("ztunnel's pods mount an API token")
	}
}

func checkCNIAgent(t *testing.T, r rendered, name string) {
	ds := r.daemonSets["cni-agent"]
	if ds == nil {
		t.Fatal("no cni-agent DaemonSet")
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("cni-agent is not in the host network; the host's CNI plugin dials its socket")
	}
	agent := container(t, spec, "cni-agent")
	add, drop := caps(agent)
	if want := []string{"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"}; !slices.Equal(add, want) {
		t.Errorf("cni-agent capabilities add %v, want exactly %v", add, want)
	}
	if !slices.Equal(drop, []string{"ALL"}) {
		t.Errorf("cni-agent capabilities drop %v, want [ALL]", drop)
	}
	if sc := agent.SecurityContext; sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("cni-agent's root filesystem is writable")
	}
	netnsMount := mount(t, agent, "/var/run/netns")
	if netnsMount.MountPropagation == nil || *netnsMount.MountPropagation != corev1.MountPropagationHostToContainer || !netnsMount.ReadOnly {
		t.Errorf("cni-agent's /var/run/netns mount %+v, want read-only with HostToContainer propagation", netnsMount)
	}
	wantDirs := map[string][2]string{
		"default":      {"/opt/cni/bin", "/etc/cni/net.d"},
		"k3s-iptables": {"/var/lib/rancher/k3s/data/cni", "/var/lib/rancher/k3s/agent/etc/cni/net.d"},
		"ha":           {"/opt/cni/bin", "/etc/cni/net.d"},
		"custom-dirs":  {"/custom/cni/bin", "/custom/cni/net.d"},
	}[name]
	for i, path := range []string{"/host/opt/cni/bin", "/host/etc/cni/net.d"} {
		m := mount(t, agent, path)
		hp := volume(t, spec, m.Name).HostPath
		if hp == nil || hp.Path != wantDirs[i] {
			t.Errorf("cni-agent's %s is host path %+v, want %s", path, hp, wantDirs[i])
		}
		flagName := map[int]string{0: "--cni-bin-dir=", 1: "--cni-conf-dir="}[i]
		if !slices.Contains(agent.Args, flagName+path) {
			t.Errorf("cni-agent args %v lack %s%s", agent.Args, flagName, path)
		}
	}
	cr, role := r.clusterRoles["ambit-cni-agent-"+ds.Namespace], r.nsRoles["cni-agent"]
	if cr == nil || role == nil {
		t.Fatal("no cni-agent ClusterRole or Role")
	}
	// What it may do, by resource: nothing else.
	allowed := map[string][]string{
		"pods": {"get", "list", "watch", "patch"}, "namespaces": {"get", "list", "watch"},
		"nodes": {"get"}, "daemonsets": {"get"},
	}
	for _, rule := range append(slices.Clone(cr.Rules), role.Rules...) {
		for _, res := range rule.Resources {
			for _, v := range rule.Verbs {
				if !slices.Contains(allowed[res], v) {
					t.Errorf("cni-agent may %s %s", v, res)
				}
			}
			if res == "daemonsets" && !slices.Equal(rule.ResourceNames, []string{ds.Name}) {
				t.Errorf("cni-agent may read DaemonSets %v; only its own (%s)", rule.ResourceNames, ds.Name)
			}
		}
	}
	if !slices.Contains(agent.Args, "--daemonset="+ds.Namespace+"/"+ds.Name) {
		t.Errorf("cni-agent args %v do not name its DaemonSet %s/%s", agent.Args, ds.Namespace, ds.Name)
	}
}

func checkIstiod(t *testing.T, r rendered, namespace string) {
	d := r.deployments["istiod"]
	if d == nil {
		t.Fatal("no istiod Deployment")
	}
	c := container(t, d.Spec.Template.Spec, "discovery")
	if add, _ := caps(c); len(add) > 0 {
		t.Errorf("istiod adds capabilities %v", add)
	}
	psc := d.Spec.Template.Spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("istiod may run as root")
	}
	v := volume(t, d.Spec.Template.Spec, "cacerts")
	if v.Secret == nil || v.Secret.Optional == nil || !*v.Secret.Optional {
		t.Errorf("istiod's cacerts volume %+v, want an optional Secret (absent: self-signed root)", v.VolumeSource)
	}
	if m := mount(t, c, "/etc/cacerts"); !m.ReadOnly || !slices.Contains(c.Args, "--ca-dir=/etc/cacerts") {
		t.Errorf("istiod's cacerts mount %+v or --ca-dir (args %v) do not match", m, c.Args)
	}
	// Secrets only in its namespace, by name except create.
	for _, rule := range r.clusterRoles["ambit-istiod-"+namespace].Rules {
		if slices.Contains(rule.Resources, "secrets") {
			t.Errorf("istiod's ClusterRole grants secrets %v; secrets belong in its namespace Role", rule.Verbs)
		}
		// ConfigMaps: only its trust bundle, except create.
		if slices.Contains(rule.Resources, "configmaps") && !slices.Equal(rule.ResourceNames, []string{"istio-ca-root-cert"}) && !slices.Equal(rule.Verbs, []string{"create"}) {
			t.Errorf("istiod may %v every ConfigMap", rule.Verbs)
		}
	}
	role := r.nsRoles["istiod"]
	if role == nil || role.Namespace != namespace {
		t.Fatalf("no istiod Role in %s", namespace)
	}
	for _, rule := range role.Rules {
		if len(rule.ResourceNames) == 0 && !slices.Equal(rule.Verbs, []string{"create"}) {
			t.Errorf("istiod's Role grants %v on every %v; only create may be unnamed", rule.Verbs, rule.Resources)
		}
	}
}

func checkEveryContainer(t *testing.T, r rendered) {
	var specs []corev1.PodSpec
	for _, ds := range r.daemonSets {
		specs = append(specs, ds.Spec.Template.Spec)
	}
	for _, d := range r.deployments {
		specs = append(specs, d.Spec.Template.Spec)
	}
	for _, s := range specs {
		for _, c := range s.Containers {
			_, drop := caps(c)
			if !slices.Equal(drop, []string{"ALL"}) {
				t.Errorf("container %s drops %v, want ALL", c.Name, drop)
			}
			if sc := c.SecurityContext; sc.Privileged != nil && *sc.Privileged {
				t.Errorf("container %s is privileged", c.Name)
			}
			if c.Image == "" || c.ImagePullPolicy == "" {
				t.Errorf("container %s has no image or pull policy", c.Name)
			}
		}
	}
	for _, rule := range r.roles {
		for _, l := range [][]string{rule.Verbs, rule.Resources, rule.APIGroups} {
			if slices.Contains(l, "*") {
				t.Errorf("an RBAC rule uses a wildcard: %+v", rule)
			}
		}
	}
}
