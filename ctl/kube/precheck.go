package kube

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	authv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Status of one precheck.
type Status string

// Statuses, in increasing severity.
const (
	OK   Status = "OK"
	Warn Status = "WARN"
	Fail Status = "FAIL"
)

// Check is one precheck's result. Next says what to do when Status is not
// OK.
type Check struct {
	Name    string `json:"name"`
	Status  Status `json:"status"`
	Message string `json:"message"`
	Next    string `json:"next,omitempty"`
}

// Report is a list of checks.
type Report []Check

// Failed reports whether any check failed.
func (r Report) Failed() bool {
	for _, c := range r {
		if c.Status == Fail {
			return true
		}
	}
	return false
}

// Write prints one line per check and an indented "->" line with what to
// do next.
func (r Report) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, c := range r {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Status, c.Name, c.Message)
		if c.Next != "" && c.Status != OK {
			fmt.Fprintf(tw, "\t\t  -> %s\n", c.Next)
		}
	}
	return tw.Flush()
}

// MinKubernetesMinor is the oldest Kubernetes 1.x Ambit supports.
const MinKubernetesMinor = 30

// ClusterChecks checks the cluster for an install into namespace ns: the
// server's version, the caller's permissions (SelfSubjectAccessReview)
// and a conflicting Istio install.
func ClusterChecks(ctx context.Context, cs kubernetes.Interface, ns string) Report {
	v := versionCheck(cs)
	r := Report{v}
	if v.Status == Fail && v.Next == nextUnreachable {
		return r
	}
	r = append(r, permissionCheck(ctx, cs, ns))
	r = append(r, conflictCheck(ctx, cs)...)
	return r
}

const nextUnreachable = "check --kubeconfig/--context and that the API server is reachable"

func versionCheck(cs kubernetes.Interface) Check {
	c := Check{Name: "kubernetes-version"}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		c.Status, c.Message = Fail, fmt.Sprintf("cannot read the server version: %v", err)
		c.Next = nextUnreachable
		return c
	}
	major, _ := strconv.Atoi(strings.TrimRight(v.Major, "+"))
	minor, _ := strconv.Atoi(strings.TrimRight(v.Minor, "+"))
	c.Message = fmt.Sprintf("server %s", v.GitVersion)
	if major > 1 || (major == 1 && minor >= MinKubernetesMinor) {
		c.Status = OK
		return c
	}
	c.Status = Fail
	c.Message += fmt.Sprintf(" is older than 1.%d", MinKubernetesMinor)
	c.Next = fmt.Sprintf("upgrade the cluster to Kubernetes 1.%d or newer", MinKubernetesMinor)
	return c
}

// Permission is one verb on one resource an install needs.
type Permission struct {
	Verb, Group, Resource string
	// Namespaced: checked in the install namespace, else cluster-wide.
	Namespaced bool
}

func (p Permission) String() string {
	res := p.Resource
	if p.Group != "" {
		res += "." + p.Group
	}
	return p.Verb + " " + res
}

// InstallPermissions are what `ambitctl install` needs.
var InstallPermissions = []Permission{
	{"create", "", "namespaces", false},
	{"create", "apiextensions.k8s.io", "customresourcedefinitions", false},
	{"create", "rbac.authorization.k8s.io", "clusterroles", false},
	{"create", "rbac.authorization.k8s.io", "clusterrolebindings", false},
	{"create", "admissionregistration.k8s.io", "validatingwebhookconfigurations", false},
	{"create", "apps", "deployments", true},
	{"create", "apps", "daemonsets", true},
	{"create", "", "services", true},
	{"create", "", "serviceaccounts", true},
	{"create", "", "configmaps", true},
	{"create", "", "secrets", true},
	{"create", "policy", "poddisruptionbudgets", true},
	{"create", "rbac.authorization.k8s.io", "roles", true},
	{"create", "rbac.authorization.k8s.io", "rolebindings", true},
	{"create", "autoscaling", "horizontalpodautoscalers", true},
}

func permissionCheck(ctx context.Context, cs kubernetes.Interface, ns string) Check {
	c := Check{Name: "permissions"}
	var missing, errs []string
	for _, p := range InstallPermissions {
		attr := &authv1.ResourceAttributes{Verb: p.Verb, Group: p.Group, Resource: p.Resource}
		if p.Namespaced {
			attr.Namespace = ns
		}
		rev, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
			&authv1.SelfSubjectAccessReview{Spec: authv1.SelfSubjectAccessReviewSpec{ResourceAttributes: attr}}, metav1.CreateOptions{})
		switch {
		case err != nil:
			errs = append(errs, fmt.Sprintf("%s: %v", p, err))
		case !rev.Status.Allowed:
			where := "cluster-wide"
			if p.Namespaced {
				where = "in " + ns
			}
			missing = append(missing, p.String()+" ("+where+")")
		}
	}
	switch {
	case len(missing) > 0:
		c.Status = Fail
		c.Message = "install needs permissions you lack: " + strings.Join(missing, ", ")
		c.Next = "ask a cluster admin for them (cluster-admin covers all), or run with --context of an admin"
	case len(errs) > 0:
		c.Status = Warn
		c.Message = fmt.Sprintf("could not check %d of %d: %s", len(errs), len(InstallPermissions), errs[0])
		c.Next = "precheck needs to create selfsubjectaccessreviews.authorization.k8s.io (every authenticated user may by default)"
	default:
		c.Status = OK
		c.Message = fmt.Sprintf("may create all %d kinds install writes (in %s and cluster-wide)", len(InstallPermissions), ns)
	}
	return c
}

// Ambit's own objects carry this label (the chart sets it); anything else
// that looks like Istio is another install.
const (
	LabelPartOf = "app.kubernetes.io/part-of"
	PartOfAmbit = "ambit"
)

func isAmbit(m metav1.ObjectMeta) bool {
	return m.Labels[LabelPartOf] == PartOfAmbit || strings.HasPrefix(m.Labels["helm.sh/chart"], "ambit")
}

func conflictCheck(ctx context.Context, cs kubernetes.Interface) Report {
	c := Check{Name: "istio-conflicts"}
	var others, ambit, errs []string
	var firstErr error
	fail := func(what string, err error) {
		if firstErr == nil {
			firstErr = err
		}
		if !slices.Contains(errs, what) {
			errs = append(errs, what)
		}
	}
	note := func(kind string, m metav1.ObjectMeta, extra string) {
		name := kind + " " + m.Namespace + "/" + m.Name
		if m.Namespace == "" {
			name = kind + " " + m.Name
		}
		if extra != "" {
			name += " (" + extra + ")"
		}
		if isAmbit(m) {
			ambit = append(ambit, name)
		} else {
			others = append(others, name)
		}
	}
	deps, err := cs.AppsV1().Deployments("").List(ctx, metav1.ListOptions{LabelSelector: LabelApp + "=" + AppIstiod})
	if err != nil {
		fail("deployments", err)
	} else {
		for _, d := range deps.Items {
			note("Deployment", d.ObjectMeta, containerImage(d.Spec.Template.Spec.Containers, "discovery"))
		}
	}
	for _, sel := range []string{LabelApp + "=" + AppZtunnel, "k8s-app=istio-cni-node"} {
		dss, err := cs.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			fail("daemonsets", err)
			continue
		}
		for _, d := range dss.Items {
			note("DaemonSet", d.ObjectMeta, containerImage(d.Spec.Template.Spec.Containers, ""))
		}
	}
	mwh, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		fail("mutatingwebhookconfigurations", err)
	} else {
		for _, w := range mwh.Items {
			if strings.HasPrefix(w.Name, "istio") {
				note("MutatingWebhookConfiguration", w.ObjectMeta, "")
			}
		}
	}
	vwh, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		fail("validatingwebhookconfigurations", err)
	} else {
		for _, w := range vwh.Items {
			if strings.HasPrefix(w.Name, "istio") {
				note("ValidatingWebhookConfiguration", w.ObjectMeta, "")
			}
		}
	}
	sort.Strings(others)
	switch {
	case len(others) > 0:
		c.Status = Fail
		c.Message = "another Istio install is present: " + strings.Join(others, ", ")
		c.Next = "uninstall it first (istioctl uninstall --purge, or helm uninstall of its releases), or use a cluster without it"
	case len(errs) > 0:
		c.Status = Warn
		c.Message = fmt.Sprintf("could not list %s: %v", strings.Join(errs, ", "), firstErr)
		c.Next = "run precheck with an identity that may list deployments, daemonsets and webhook configurations cluster-wide"
	case len(ambit) > 0:
		c.Status = Warn
		c.Message = "Ambit is already installed: " + strings.Join(ambit, ", ")
		c.Next = "use ambitctl upgrade to change it, or ambitctl uninstall first"
	default:
		c.Status = OK
		c.Message = "no istiod, ztunnel, istio-cni or istio webhook found"
	}
	return Report{c}
}

// Node is the machine the node checks read: Root prefixes every path
// ("/" when empty) and LookPath and Run find and run tools (exec's when
// nil).
type Node struct {
	Root     string
	LookPath func(string) (string, error)
	Run      func(name string, args ...string) error
}

func (n Node) path(p string) string {
	if n.Root == "" {
		return p
	}
	return filepath.Join(n.Root, p)
}

func (n Node) lookPath(name string) error {
	if n.LookPath != nil {
		_, err := n.LookPath(name)
		return err
	}
	_, err := exec.LookPath(name)
	return err
}

func (n Node) run(name string, args ...string) error {
	if n.Run != nil {
		return n.Run(name, args...)
	}
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (n Node) exists(p string) bool {
	_, err := os.Stat(n.path(p))
	return err == nil
}

// mountTypes are the filesystem types mounted, by mount point.
func (n Node) mountTypes() map[string]string {
	b, err := os.ReadFile(n.path("/proc/mounts"))
	if err != nil {
		return nil
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 {
			m[f[1]] = f[2]
		}
	}
	return m
}

// Capture backends precheck knows.
var CaptureBackends = []string{"nftables", "iptables", "ebpf"}

// NodeChecks checks the node: the CNI conf dir and the kernel features
// each capture backend needs. capture is the backend the install will use
// ("auto" or one of CaptureBackends): a missing feature of that backend
// fails; with auto, the node fails only when no backend works.
func NodeChecks(n Node, cniConfDir, capture string) Report {
	r := Report{cniCheck(n, cniConfDir)}
	usable := 0
	var backends Report
	for _, b := range CaptureBackends {
		c := backendCheck(n, b)
		if c.Status == OK {
			usable++
		} else if b == capture {
			c.Status = Fail
		}
		backends = append(backends, c)
	}
	if capture == "auto" && usable == 0 {
		for i := range backends {
			backends[i].Status = Fail
		}
	}
	return append(r, backends...)
}

func cniCheck(n Node, dir string) Check {
	c := Check{Name: "cni-conf-dir"}
	entries, err := os.ReadDir(n.path(dir))
	if err != nil {
		c.Status, c.Message = Warn, fmt.Sprintf("cannot read %s: %v", dir, err)
		c.Next = "install the cluster's primary CNI first, or set the chart's cniConfDir to where this platform keeps it (k3s: /var/lib/rancher/k3s/agent/etc/cni/net.d)"
		return c
	}
	var confs []string
	for _, e := range entries {
		if ext := filepath.Ext(e.Name()); ext == ".conflist" || ext == ".conf" || ext == ".json" {
			confs = append(confs, e.Name())
		}
	}
	sort.Strings(confs)
	if len(confs) == 0 {
		c.Status, c.Message = Warn, dir+" holds no CNI config yet"
		c.Next = "install the cluster's primary CNI first: the cni-agent chains ambit-cni into its config"
		return c
	}
	b, _ := os.ReadFile(filepath.Join(n.path(dir), confs[0]))
	if strings.Contains(string(b), `"istio-cni"`) {
		c.Status = Warn
		c.Message = fmt.Sprintf("%s (the primary config) chains Istio's istio-cni plugin", confs[0])
		c.Next = "uninstall Istio's CNI agent before installing Ambit"
		return c
	}
	c.Status, c.Message = OK, fmt.Sprintf("%s: primary config %s", dir, confs[0])
	return c
}

func backendCheck(n Node, backend string) Check {
	c := Check{Name: "capture-" + backend, Status: OK}
	switch backend {
	case "nftables":
		if n.exists("/sys/module/nf_tables") {
			c.Message = "nf_tables is loaded"
		} else if err := n.run("nft", "list", "tables"); err == nil {
			c.Message = "nft list tables works"
		} else {
			c.Status = Warn
			c.Message = "nf_tables is not loaded and nft does not work: " + err.Error()
			c.Next = "modprobe nf_tables (or choose another capture backend)"
		}
	case "iptables":
		if err := n.lookPath("iptables"); err != nil {
			c.Status, c.Message = Warn, "no iptables binary on PATH"
			c.Next = "install iptables (iptables-nft or legacy), or choose another capture backend"
		} else if !n.exists("/sys/module/ip_tables") && !n.exists("/sys/module/nf_tables") {
			c.Status, c.Message = Warn, "neither ip_tables nor nf_tables is loaded"
			c.Next = "modprobe ip_tables (or nf_tables for iptables-nft)"
		} else {
			c.Message = "iptables present and a kernel table module loaded"
		}
	case "ebpf":
		mounts := n.mountTypes()
		var miss []string
		if mounts["/sys/fs/bpf"] != "bpf" {
			miss = append(miss, "bpffs at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")
		}
		if !n.exists("/sys/kernel/btf/vmlinux") {
			miss = append(miss, "BTF at /sys/kernel/btf/vmlinux (a kernel built with CONFIG_DEBUG_INFO_BTF)")
		}
		cg2 := false
		for _, t := range mounts {
			cg2 = cg2 || t == "cgroup2"
		}
		if !cg2 {
			miss = append(miss, "a cgroup v2 mount")
		}
		if len(miss) > 0 {
			c.Status, c.Message = Warn, "missing "+strings.Join(miss, ", ")
			c.Next = "provide them, or choose the nftables or iptables capture backend"
		} else {
			c.Message = "bpffs mounted, BTF present, cgroup v2 mounted"
		}
	}
	return c
}
