package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/ctl/kube"
	"github.com/ambit-mesh/ambit/ctl/local"
	"github.com/ambit-mesh/ambit/ctl/pstatus"
	"github.com/ambit-mesh/ambit/ctl/zconfig"
	"github.com/ambit-mesh/ambit/pkg/syncz"
	"github.com/ambit-mesh/ambit/pkg/version"
)

// exitFailedChecks is precheck's exit code when a check FAILed.
const exitFailedChecks = 3

// kubeFlags are kubectl's connection flags plus the namespace Ambit lives
// in, shared by the cluster commands.
type kubeFlags struct {
	cf *genericclioptions.ConfigFlags
}

func newKubeFlags() *kubeFlags {
	return &kubeFlags{cf: genericclioptions.NewConfigFlags(false)}
}

// add defines kubectl's flags on fs; -n/--namespace is where Ambit is
// (to be) installed.
func (k *kubeFlags) add(fs *pflag.FlagSet) {
	k.cf.AddFlags(fs)
	if f := fs.Lookup("namespace"); f != nil {
		f.Usage = "namespace Ambit is installed in (default " + kube.DefaultNamespace + ")"
	}
}

// namespace is -n, or istio-system.
func (k *kubeFlags) namespace() string {
	if k.cf.Namespace != nil && *k.cf.Namespace != "" {
		return *k.cf.Namespace
	}
	return kube.DefaultNamespace
}

func (k *kubeFlags) client() (*kube.Client, error) { return kube.NewClient(k.cf) }

func newClusterCmds(a *app) []*cobra.Command {
	k := newKubeFlags()
	cmds := []*cobra.Command{
		newEnrollCmd(a, k, true), newEnrollCmd(a, k, false),
		newPrecheckCmd(a, k), newVersionCmd(a, k),
		newZtunnelConfigCmd(a, k), newProxyStatusCmd(a, k),
	}
	cmds = append(cmds, newInstallCmds(a, k)...)
	return cmds
}

func newEnrollCmd(a *app, k *kubeFlags, enroll bool) *cobra.Command {
	var pods bool
	cmd := &cobra.Command{
		Use:   "enroll NAMESPACE...",
		Short: "Add namespaces to the ambient mesh (label istio.io/dataplane-mode=ambient)",
		Long: `enroll labels each namespace istio.io/dataplane-mode=ambient: its pods, new
and running, are captured by the node's ztunnel. Enrolling an enrolled
namespace changes nothing. A pod labelled istio.io/dataplane-mode=none stays out.`,
		Example: "  ambitctl enroll demo\n  ambitctl enroll shop payments --context prod",
		Args:    cobra.MinimumNArgs(1),
	}
	if !enroll {
		cmd.Use = "unenroll NAMESPACE..."
		cmd.Short = "Take namespaces out of the ambient mesh (remove label istio.io/dataplane-mode)"
		cmd.Long = `unenroll removes the label istio.io/dataplane-mode from each namespace; its
pods are released from capture without a restart. Pods that carry
istio.io/dataplane-mode=ambient themselves stay enrolled: unenroll names
them, and with --pods removes their label too. Unenrolling a namespace that
is not enrolled changes nothing.`
		cmd.Example = "  ambitctl unenroll demo\n  ambitctl unenroll demo --pods"
		cmd.Flags().BoolVar(&pods, "pods", false, "also remove istio.io/dataplane-mode=ambient from the namespace's pods")
	}
	k.add(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := k.client()
		if err != nil {
			return err
		}
		for _, ns := range args {
			if enroll {
				r, err := kube.Enroll(cmd.Context(), c.Clientset, ns)
				if err != nil {
					return err
				}
				switch {
				case !r.Changed:
					fmt.Fprintf(a.stdout, "namespace %s already enrolled\n", ns)
				case r.Previous != "":
					fmt.Fprintf(a.stdout, "namespace %s enrolled (%s=%s, was %s)\n", ns, kube.LabelDataplaneMode, kube.ValueAmbient, r.Previous)
				default:
					fmt.Fprintf(a.stdout, "namespace %s enrolled (%s=%s)\n", ns, kube.LabelDataplaneMode, kube.ValueAmbient)
				}
				continue
			}
			r, err := kube.Unenroll(cmd.Context(), c.Clientset, ns, pods)
			if err != nil {
				return err
			}
			if r.Previous != "" {
				fmt.Fprintf(a.stdout, "namespace %s unenrolled (removed %s=%s)\n", ns, kube.LabelDataplaneMode, r.Previous)
			} else {
				fmt.Fprintf(a.stdout, "namespace %s was not enrolled\n", ns)
			}
			if len(r.PodsUnlabelled) > 0 {
				fmt.Fprintf(a.stdout, "removed %s from pods: %s\n", kube.LabelDataplaneMode, strings.Join(r.PodsUnlabelled, ", "))
			}
			if len(r.PodsLabelled) > 0 {
				fmt.Fprintf(a.stderr, "warning: pods in %s labelled %s=%s stay enrolled: %s (unenroll --pods removes their label)\n",
					ns, kube.LabelDataplaneMode, kube.ValueAmbient, strings.Join(r.PodsLabelled, ", "))
			}
		}
		return nil
	}
	return cmd
}

func newPrecheckCmd(a *app, k *kubeFlags) *cobra.Command {
	var (
		localNode        bool
		confDir, capture string
		output           string
	)
	cmd := &cobra.Command{
		Use:   "precheck",
		Short: "Check that Ambit can be installed: cluster version, permissions, conflicts, and (--local-node) this node",
		Long: `precheck checks the cluster of --kubeconfig/--context: the Kubernetes version
(1.` + fmt.Sprint(kube.MinKubernetesMinor) + ` or newer), your permissions for what install creates
(SelfSubjectAccessReview), and another Istio install (istiod, ztunnel or
istio-cni workloads, istio webhooks). With --local-node it also checks the
machine it runs on as a node: the CNI conf dir and the kernel features of
each capture backend (nftables, iptables, eBPF).

Each check prints OK, WARN or FAIL with what to do next. The exit code is 3
when a check FAILs.`,
		Example: "  ambitctl precheck\n  ambitctl precheck --local-node --capture nftables\n  ambitctl precheck -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usageError("-o %q: use text or json", output)
			}
			if capture != "auto" && !contains(kube.CaptureBackends, capture) {
				return usageError("--capture %q: use auto or one of %s", capture, strings.Join(kube.CaptureBackends, ", "))
			}
			var r kube.Report
			if c, err := k.client(); err != nil {
				r = append(r, kube.Check{Name: "cluster", Status: kube.Fail, Message: err.Error(), Next: "fix the connection, then run precheck again"})
			} else {
				r = append(r, kube.ClusterChecks(cmd.Context(), c.Clientset, k.namespace())...)
			}
			if localNode {
				r = append(r, kube.NodeChecks(kube.Node{}, confDir, capture)...)
			}
			if output == "json" {
				if err := writeJSON(a.stdout, r); err != nil {
					return err
				}
			} else if err := r.Write(a.stdout); err != nil {
				return err
			}
			if r.Failed() {
				return &exitErr{code: exitFailedChecks}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&localNode, "local-node", false, "also check this machine as a node (CNI conf dir, kernel features)")
	cmd.Flags().StringVar(&confDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI conf dir (with --local-node)")
	cmd.Flags().StringVar(&capture, "capture", "auto", "capture backend to require (with --local-node): auto, "+strings.Join(kube.CaptureBackends, ", "))
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output: text or json")
	k.add(cmd.Flags())
	return cmd
}

func newVersionCmd(a *app, k *kubeFlags) *cobra.Command {
	var (
		short, clientOnly bool
		output            string
	)
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Show the versions of ambitctl, the control plane (istiod) and the data plane (ztunnels)",
		Long: `version shows ambitctl's own version and, from the cluster, each istiod
Deployment's version (label app.kubernetes.io/version, else its image tag)
and how many ztunnel pods run each version (their image tags).`,
		Example: "  ambitctl version\n  ambitctl version --short\n  ambitctl version -o json\n  ambitctl version --client",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "" && output != "json" && output != "yaml" {
				return usageError("-o %q: use json or yaml", output)
			}
			v := kube.Versions{Client: version.Version}
			if !clientOnly {
				c, err := k.client()
				if err != nil {
					return fmt.Errorf("%w (--client shows ambitctl's version alone)", err)
				}
				if v, err = kube.GetVersions(cmd.Context(), c.Clientset, k.namespace(), version.Version); err != nil {
					return err
				}
			}
			switch output {
			case "json":
				return writeJSON(a.stdout, v)
			case "yaml":
				return writeYAML(a.stdout, v)
			}
			return writeVersions(a.stdout, v, short, clientOnly)
		},
	}
	cmd.Flags().BoolVar(&short, "short", false, "one line per part: client, control plane, data plane")
	cmd.Flags().BoolVar(&clientOnly, "client", false, "ambitctl's version only; do not contact the cluster")
	cmd.Flags().StringVarP(&output, "output", "o", "", "json or yaml (default: text)")
	k.add(cmd.Flags())
	return cmd
}

func writeVersions(w io.Writer, v kube.Versions, short, clientOnly bool) error {
	fmt.Fprintf(w, "client version: %s\n", v.Client)
	if clientOnly {
		return nil
	}
	var cp, dp []string
	pods := 0
	for _, c := range v.ControlPlane {
		if !contains(cp, c.Version) {
			cp = append(cp, c.Version)
		}
	}
	for _, d := range v.DataPlane {
		dp = append(dp, fmt.Sprintf("%s (%d %s)", d.Version, d.Pods, plural(d.Pods, "ztunnel")))
		pods += d.Pods
	}
	if len(cp) == 0 {
		cp = []string{"none (not installed)"}
	}
	if len(dp) == 0 {
		dp = []string{"none (no ztunnel pods)"}
	}
	fmt.Fprintf(w, "control plane version: %s\n", strings.Join(cp, ", "))
	fmt.Fprintf(w, "data plane version: %s\n", strings.Join(dp, ", "))
	if short {
		return nil
	}
	for _, c := range v.ControlPlane {
		fmt.Fprintf(w, "  istiod %s/%s: %s, %d/%d ready, image %s\n", c.Namespace, c.Name, c.Version, c.Ready, c.Replicas, c.Image)
	}
	return nil
}

func plural(n int, s string) string {
	if n == 1 {
		return s
	}
	return s + "s"
}

// inspectFlags choose where the inspection commands read from: a cluster
// (kubectl's flags) or the local mesh (--local, --state-dir).
type inspectFlags struct {
	k        *kubeFlags
	isLocal  bool
	stateDir string
	output   string
}

func (f *inspectFlags) add(a *app, fs *pflag.FlagSet) {
	fs.BoolVar(&f.isLocal, "local", false, "read the local mesh (ambitctl local) instead of a cluster")
	def := local.DefaultStateDir
	if v := a.getenv(EnvLocalDir); v != "" {
		def = v
	}
	fs.StringVar(&f.stateDir, FlagStateDir, def, "with --local: local mode's state dir (env "+EnvLocalDir+")")
	fs.StringVarP(&f.output, "output", "o", "short", "output: short, json or yaml")
	f.k.add(fs)
}

func (f *inspectFlags) localSource() local.AdminSource {
	return local.AdminSource{Paths: local.Paths{Dir: f.stateDir}}
}

// ztunnelSource reads a node's ztunnel admin endpoint.
type ztunnelSource struct {
	local local.AdminSource
	node  string
}

func (s ztunnelSource) Get(ctx context.Context, path string) ([]byte, error) {
	return s.local.ZtunnelGet(ctx, s.node, path)
}

var (
	_ zconfig.Source = ztunnelSource{}
	_ zconfig.Source = kube.PodHTTP{}
)

// ZtunnelAdminPort is ztunnel's admin port in its pod.
const ZtunnelAdminPort = 15000

func newZtunnelConfigCmd(a *app, k *kubeFlags) *cobra.Command {
	f := &inspectFlags{k: k}
	var node string
	cmd := &cobra.Command{
		Use:   "ztunnel-config KIND",
		Short: "Show a ztunnel's state: workloads, services, policies, certificates, connections, all",
		Long: `ztunnel-config reads a ztunnel's /config_dump (admin port 15000) and shows one
part of it with istioctl's columns, or as JSON or YAML. In a cluster it
reaches the ztunnel pod on --node (any node when not given) through the API
server's port-forward; with --local, the local mesh's ztunnel on --node (the
first node when not given).

connections shows how many connections each captured pod has open: Ambit's
ztunnel does not export the connections themselves. certificates lists each
identity's leaf certificate (the dump carries no chain).`,
		Example: "  ambitctl ztunnel-config workloads --local\n  ambitctl ztunnel-config services --node worker-1\n  ambitctl ztunnel-config all -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(a.stderr)
			_ = cmd.Help()
			return &exitErr{code: exitUsage}
		},
	}
	cmd.PersistentFlags().StringVar(&node, "node", "", "the node whose ztunnel to read")
	f.add(a, cmd.PersistentFlags())
	for _, kind := range append(append([]string(nil), zconfig.Kinds...), zconfig.All) {
		cmd.AddCommand(&cobra.Command{
			Use:     kind,
			Short:   "Show the ztunnel's " + kind,
			Example: fmt.Sprintf("  ambitctl ztunnel-config %s --local --node node-a\n  ambitctl ztunnel-config %s --context prod -o yaml", kind, kind),
			Args:    cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if err := zconfig.CheckFormat(f.output); err != nil {
					return usageError("%v", err)
				}
				src, err := f.ztunnel(cmd.Context(), a, node)
				if err != nil {
					return err
				}
				d, err := zconfig.Fetch(cmd.Context(), src)
				if err != nil {
					return err
				}
				return zconfig.Write(a.stdout, d, kind, f.output, time.Now())
			},
		})
	}
	return cmd
}

// ztunnel finds the ztunnel of node (any, when "").
func (f *inspectFlags) ztunnel(ctx context.Context, a *app, node string) (zconfig.Source, error) {
	if f.isLocal {
		src := f.localSource()
		nodes, err := src.Nodes()
		if err != nil {
			return nil, err
		}
		if node == "" {
			node = nodes[0]
		} else if !contains(nodes, node) {
			return nil, fmt.Errorf("--node %q: the local mesh has nodes %s", node, strings.Join(nodes, ", "))
		}
		return ztunnelSource{local: src, node: node}, nil
	}
	c, err := f.k.client()
	if err != nil {
		return nil, err
	}
	pod, err := kube.FindPod(ctx, c, f.k.namespace(), kube.AppZtunnel, node)
	if err != nil {
		return nil, err
	}
	if node == "" {
		fmt.Fprintf(a.stderr, "ztunnel %s/%s on node %s (choose with --node)\n", pod.Namespace, pod.Name, pod.Spec.NodeName)
	}
	return kube.PodHTTP{Client: c, Namespace: pod.Namespace, Pod: pod.Name, Port: ZtunnelAdminPort}, nil
}

// IstiodHTTPPort is istiod's HTTP (readiness and debug) port in its pod.
const IstiodHTTPPort = 15014

func newProxyStatusCmd(a *app, k *kubeFlags) *cobra.Command {
	f := &inspectFlags{k: k}
	var addr string
	cmd := &cobra.Command{
		Use:   "proxy-status",
		Short: "Show every ztunnel and waypoint connected to istiod, SYNCED or STALE per resource type",
		Long: `proxy-status reads istiod's ` + syncz.Path + ` and shows one row per connected proxy:
NAME NODE KIND VERSION, then one column per resource type (WDS workloads,
WADS authorizations; CDS, LDS, RDS, EDS for waypoints): SYNCED when the proxy
acknowledged the last version istiod sent, STALE when it has not (or
rejected it: the rejection is printed below the table), NOT SENT when
nothing was sent yet, "-" when the proxy did not subscribe to the type.

istiod is reached through the API server's port-forward to its pod (port
` + fmt.Sprint(IstiodHTTPPort) + `), at --istiod-addr, or with --local in the local mesh.`,
		Example: "  ambitctl proxy-status\n  ambitctl proxy-status --local\n  ambitctl proxy-status --istiod-addr 127.0.0.1:8080 -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !contains(zconfig.Formats, f.output) {
				return usageError("-o %q: use one of %s", f.output, strings.Join(zconfig.Formats, ", "))
			}
			body, err := f.istiodGet(cmd.Context(), addr, syncz.Path)
			if err != nil && strings.Contains(err.Error(), "status 404") {
				return fmt.Errorf("%w\nthis istiod does not serve %s: upgrade it to this ambitctl's version (ambitctl version)", err, syncz.Path)
			}
			if err != nil {
				return err
			}
			ps, err := pstatus.Parse(body)
			if err != nil {
				return err
			}
			return pstatus.Write(a.stdout, ps, f.output)
		},
	}
	cmd.Flags().StringVar(&addr, "istiod-addr", "", "istiod's HTTP address host:port (instead of a port-forward)")
	f.add(a, cmd.Flags())
	return cmd
}

func (f *inspectFlags) istiodGet(ctx context.Context, addr, path string) ([]byte, error) {
	switch {
	case addr != "":
		return httpGet(ctx, "http://"+addr+path)
	case f.isLocal:
		return f.localSource().IstiodGet(ctx, path)
	}
	c, err := f.k.client()
	if err != nil {
		return nil, err
	}
	pod, err := kube.FindPod(ctx, c, f.k.namespace(), kube.AppIstiod, "")
	if err != nil {
		return nil, err
	}
	return kube.PodHTTP{Client: c, Namespace: pod.Namespace, Pod: pod.Name, Port: IstiodHTTPPort}.Get(ctx, path)
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func writeYAML(w io.Writer, v any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
