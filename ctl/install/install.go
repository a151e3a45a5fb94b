package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"helm.sh/helm/v4/pkg/action"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/cli/values"
	"helm.sh/helm/v4/pkg/getter"
	"helm.sh/helm/v4/pkg/kube"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/deploy/charts"
	"github.com/ambit-mesh/ambit/istiod/rootcert"
)

// Defaults of the flags.
const (
	DefaultRelease = "ambit"
	DefaultTimeout = 5 * time.Minute
	// FieldManager owns what ambitctl applies itself (the CRDs on upgrade).
	FieldManager = "ambitctl"
	// LabelInstance is the release label the chart puts on every object.
	LabelInstance = "app.kubernetes.io/instance"
)

// Options are one install, upgrade or uninstall.
type Options struct {
	// Getter gives the cluster (kubectl's flags); unused by a dry run.
	Getter    genericclioptions.RESTClientGetter
	Namespace string
	Release   string
	// ValueFiles (-f) and Set (--set key=value) are merged as helm does.
	ValueFiles []string
	Set        []string
	Wait       bool
	Timeout    time.Duration
	DryRun     bool
	// Progress gets one line per step and the waiting progress.
	Progress io.Writer
	// Logger receives Helm's own logs (discarded when nil).
	Logger *slog.Logger
	// pollInterval is Wait's poll period (2s when zero).
	pollInterval time.Duration
}

func (o *Options) defaults() {
	if o.Release == "" {
		o.Release = DefaultRelease
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.pollInterval == 0 {
		o.pollInterval = 2 * time.Second
	}
}

// Values merges the -f files and --set values.
func (o *Options) Values() (map[string]any, error) {
	v, err := (&values.Options{ValueFiles: o.ValueFiles, Values: o.Set}).MergeValues(getter.Providers{})
	if err != nil {
		return nil, fmt.Errorf("reading values (-f, --set): %w", err)
	}
	return v, nil
}

func (o *Options) helm() (*action.Configuration, error) {
	h := slog.DiscardHandler
	if o.Logger != nil {
		h = o.Logger.Handler()
	}
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(h))
	if err := cfg.Init(o.Getter, o.Namespace, "secret"); err != nil {
		return nil, fmt.Errorf("connecting Helm to the cluster: %w", err)
	}
	return cfg, nil
}

// Render is the dry run: the CRDs and the manifest install would apply.
func Render(o Options) (string, error) {
	o.defaults()
	vals, err := o.Values()
	if err != nil {
		return "", err
	}
	crds, err := charts.CRDs()
	if err != nil {
		return "", err
	}
	m, err := charts.Render(vals, o.Release, o.Namespace)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(crds), "\n") + "\n---\n" + m, nil
}

// prepare gives what Install and Upgrade both start from: the merged
// values, the embedded chart and Helm connected to the cluster.
func (o *Options) prepare() (map[string]any, *chart.Chart, *action.Configuration, error) {
	vals, err := o.Values()
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := charts.Load()
	if err != nil {
		return nil, nil, nil, err
	}
	cfg, err := o.helm()
	if err != nil {
		return nil, nil, nil, err
	}
	return vals, c, cfg, nil
}

// Install installs the chart as a new release (creating the namespace).
func Install(ctx context.Context, o Options) error {
	o.defaults()
	vals, c, cfg, err := o.prepare()
	if err != nil {
		return err
	}
	inst := action.NewInstall(cfg)
	inst.ReleaseName, inst.Namespace = o.Release, o.Namespace
	inst.CreateNamespace = true
	inst.ServerSideApply = true
	inst.WaitStrategy = kube.HookOnlyStrategy
	inst.Timeout = o.Timeout
	fmt.Fprintf(o.Progress, "installing release %s in namespace %s (CRDs, istiod, ztunnel, cni-agent)\n", o.Release, o.Namespace)
	if _, err := inst.RunWithContext(ctx, c, vals); err != nil {
		if strings.Contains(err.Error(), "still in use") {
			return fmt.Errorf("release %s already exists in %s: use ambitctl upgrade to change it", o.Release, o.Namespace)
		}
		return fmt.Errorf("installing: %w%s", err, permissionHint(err))
	}
	fmt.Fprintf(o.Progress, "release %s installed\n", o.Release)
	return o.wait(ctx)
}

// Upgrade applies the chart's CRDs, then upgrades the release.
func Upgrade(ctx context.Context, o Options) error {
	o.defaults()
	vals, c, cfg, err := o.prepare()
	if err != nil {
		return err
	}
	n, err := applyCRDs(ctx, o.Getter)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Progress, "applied %d CRDs\n", n)
	up := action.NewUpgrade(cfg)
	up.Namespace = o.Namespace
	up.ServerSideApply = "true"
	up.WaitStrategy = kube.HookOnlyStrategy
	up.Timeout = o.Timeout
	fmt.Fprintf(o.Progress, "upgrading release %s in namespace %s\n", o.Release, o.Namespace)
	if _, err := up.RunWithContext(ctx, o.Release, c, vals); err != nil {
		if msg := err.Error(); strings.Contains(msg, "has no deployed releases") || strings.Contains(msg, "not found") {
			return fmt.Errorf("upgrading: %w (no release %s in %s: ambitctl install first)", err, o.Release, o.Namespace)
		}
		return fmt.Errorf("upgrading: %w%s", err, permissionHint(err))
	}
	fmt.Fprintf(o.Progress, "release %s upgraded\n", o.Release)
	return o.wait(ctx)
}

// Uninstall removes the release and, once istiod has stopped, the trust
// bundle ConfigMaps it published; with purge also the CRDs and istiod's CA
// Secret. It returns the objects it removed beyond the release's own.
func Uninstall(ctx context.Context, o Options, purge bool) ([]string, error) {
	o.defaults()
	cfg, err := o.helm()
	if err != nil {
		return nil, err
	}
	un := action.NewUninstall(cfg)
	un.WaitStrategy = kube.HookOnlyStrategy
	un.Timeout = o.Timeout
	fmt.Fprintf(o.Progress, "uninstalling release %s from namespace %s\n", o.Release, o.Namespace)
	_, err = un.Run(o.Release)
	switch {
	case err != nil && strings.Contains(err.Error(), "not found") && purge:
		fmt.Fprintf(o.Progress, "no release %s in %s; purging what is left\n", o.Release, o.Namespace)
	case err != nil && strings.Contains(err.Error(), "not found"):
		return nil, fmt.Errorf("no release %s in namespace %s (ambitctl version shows what is installed; -n picks the namespace)", o.Release, o.Namespace)
	case err != nil:
		return nil, fmt.Errorf("uninstalling: %w%s", err, permissionHint(err))
	default:
		fmt.Fprintf(o.Progress, "release %s uninstalled\n", o.Release)
	}
	removed, err := removeRootCerts(ctx, o)
	if !purge {
		return removed, err
	}
	more, perr := purgeLeftovers(ctx, o)
	removed = append(removed, more...)
	sort.Strings(removed)
	return removed, errors.Join(err, perr)
}

// removeRootCerts deletes the trust-bundle ConfigMap istiod published in
// every namespace, once no istiod pod of the release runs any more (a
// running one would publish it again). The CA Secret stays unless purged:
// a reinstall then keeps every workload's identity chain valid.
func removeRootCerts(ctx context.Context, o Options) ([]string, error) {
	_, cs, err := dynamicClient(o.Getter)
	if err != nil {
		return nil, err
	}
	istiods := metav1.ListOptions{LabelSelector: "app=istiod," + LabelInstance + "=" + o.Release}
	deadline := time.Now().Add(o.Timeout)
	for reported := false; ; {
		pods, err := cs.CoreV1().Pods(o.Namespace).List(ctx, istiods)
		if err != nil {
			return nil, fmt.Errorf("listing istiod pods: %w%s", err, permissionHint(err))
		}
		if len(pods.Items) == 0 {
			break
		}
		if !reported {
			fmt.Fprintf(o.Progress, "waiting for %d istiod pod(s) to stop before removing the %s ConfigMaps\n", len(pods.Items), rootcert.ConfigMapName)
			reported = true
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("istiod pods still running after %s; the %s ConfigMaps were left (kubectl -n %s get pods -l app=istiod; run uninstall again once they are gone)",
				o.Timeout, rootcert.ConfigMapName, o.Namespace)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(o.pollInterval):
		}
	}
	cms, err := cs.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{
		FieldSelector: "metadata.name=" + rootcert.ConfigMapName,
		LabelSelector: rootcert.LabelKey + "=" + rootcert.LabelValue,
	})
	if err != nil {
		return nil, fmt.Errorf("listing %s ConfigMaps: %w%s", rootcert.ConfigMapName, err, permissionHint(err))
	}
	var removed []string
	var errs []error
	for _, cm := range cms.Items {
		err := cs.CoreV1().ConfigMaps(cm.Namespace).Delete(ctx, cm.Name, metav1.DeleteOptions{})
		switch {
		case err == nil:
			removed = append(removed, "ConfigMap "+cm.Namespace+"/"+cm.Name)
		case !apierrors.IsNotFound(err):
			errs = append(errs, fmt.Errorf("deleting ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err))
		}
	}
	return removed, errors.Join(errs...)
}

// permissionHint points a forbidden error at precheck, which lists the
// permissions install needs.
func permissionHint(err error) string {
	if strings.Contains(err.Error(), "forbidden") {
		return "\n(ambitctl precheck lists the permissions install needs and which you lack)"
	}
	return ""
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// chartCRDs parses charts.CRDs().
func chartCRDs() ([]*unstructured.Unstructured, error) {
	data, err := charts.CRDs()
	if err != nil {
		return nil, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("parsing the chart's CRDs: %w", err)
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	return out, nil
}

func dynamicClient(g genericclioptions.RESTClientGetter) (dynamic.Interface, *kubernetes.Clientset, error) {
	rc, err := g.ToRESTConfig()
	if err != nil {
		return nil, nil, err
	}
	d, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	return d, cs, err
}

// applyCRDs server-side applies the chart's CRDs.
func applyCRDs(ctx context.Context, g genericclioptions.RESTClientGetter) (int, error) {
	crds, err := chartCRDs()
	if err != nil {
		return 0, err
	}
	d, _, err := dynamicClient(g)
	if err != nil {
		return 0, err
	}
	force := true
	for _, crd := range crds {
		body, err := crd.MarshalJSON()
		if err != nil {
			return 0, err
		}
		if _, err := d.Resource(crdGVR).Patch(ctx, crd.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: FieldManager, Force: &force}); err != nil {
			if apierrors.IsForbidden(err) {
				return 0, fmt.Errorf("applying CRD %s: %w (upgrade needs permission to patch customresourcedefinitions.apiextensions.k8s.io)", crd.GetName(), err)
			}
			return 0, fmt.Errorf("applying CRD %s: %w", crd.GetName(), err)
		}
	}
	return len(crds), nil
}

// purgeLeftovers deletes the chart's CRDs and istiod's CA Secret.
func purgeLeftovers(ctx context.Context, o Options) ([]string, error) {
	crds, err := chartCRDs()
	if err != nil {
		return nil, err
	}
	d, cs, err := dynamicClient(o.Getter)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, crd := range crds {
		err := d.Resource(crdGVR).Delete(ctx, crd.GetName(), metav1.DeleteOptions{})
		switch {
		case err == nil:
			removed = append(removed, "CustomResourceDefinition "+crd.GetName())
		case !apierrors.IsNotFound(err):
			errs = append(errs, fmt.Errorf("deleting CRD %s: %w", crd.GetName(), err))
		}
	}
	caSecret := "istio-ca-secret"
	if err := cs.CoreV1().Secrets(o.Namespace).Delete(ctx, caSecret, metav1.DeleteOptions{}); err == nil {
		removed = append(removed, "Secret "+o.Namespace+"/"+caSecret)
	} else if !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("deleting Secret %s/%s: %w", o.Namespace, caSecret, err))
	}
	sort.Strings(removed)
	return removed, errors.Join(errs...)
}

// notReady lists the release's Deployments and DaemonSets that are not
// ready yet, each with its ready count ("DaemonSet ztunnel 1/2").
func notReady(ctx context.Context, cs kubernetes.Interface, ns, release string) ([]string, error) {
	sel := metav1.ListOptions{LabelSelector: LabelInstance + "=" + release}
	deps, err := cs.AppsV1().Deployments(ns).List(ctx, sel)
	if err != nil {
		return nil, err
	}
	dss, err := cs.AppsV1().DaemonSets(ns).List(ctx, sel)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range deps.Items {
		if !deploymentReady(&d) {
			want := int32(1)
			if d.Spec.Replicas != nil {
				want = *d.Spec.Replicas
			}
			out = append(out, fmt.Sprintf("Deployment %s %d/%d", d.Name, d.Status.ReadyReplicas, want))
		}
	}
	for _, d := range dss.Items {
		if !daemonSetReady(&d) {
			out = append(out, fmt.Sprintf("DaemonSet %s %d/%d", d.Name, d.Status.NumberReady, d.Status.DesiredNumberScheduled))
		}
	}
	sort.Strings(out)
	return out, nil
}

func deploymentReady(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	return s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == want && s.ReadyReplicas >= want && s.AvailableReplicas >= want
}

func daemonSetReady(d *appsv1.DaemonSet) bool {
	s := d.Status
	return s.ObservedGeneration >= d.Generation && s.UpdatedNumberScheduled == s.DesiredNumberScheduled && s.NumberReady == s.DesiredNumberScheduled
}

// wait polls until the release's workloads are ready (when o.Wait).
func (o *Options) wait(ctx context.Context) error {
	if !o.Wait {
		return nil
	}
	_, cs, err := dynamicClient(o.Getter)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(o.Timeout)
	last, pendingText := "", "nothing listed yet"
	t := time.NewTicker(o.pollInterval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		pending, err := notReady(pctx, cs, o.Namespace, o.Release)
		cancel()
		if err == nil && len(pending) == 0 {
			fmt.Fprintln(o.Progress, "all workloads ready")
			return nil
		}
		now := "error: " + fmt.Sprint(err)
		if err == nil {
			now = strings.Join(pending, ", ")
			pendingText = now
		}
		if now != last {
			fmt.Fprintf(o.Progress, "waiting for: %s\n", now)
			last = now
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %s (kubectl -n %s get pods; kubectl -n %s describe pods -l %s=%s shows why)",
				o.Timeout, pendingText, o.Namespace, o.Namespace, LabelInstance, o.Release)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
