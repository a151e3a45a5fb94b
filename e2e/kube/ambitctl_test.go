package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/ctl/kube"
	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/istiod/rootcert"
)

// Namespaces of the ambitctl tests (the shared cluster's other tests keep
// out of them).
const (
	ctlNS     = "ambt-ctl-enroll"
	ctlSysNS  = "ambt-ctl-system"
	ctlUserNS = "ambt-ctl-user"
)

var ambitctlBin struct {
	once sync.Once
	path string
	err  error
}

// ambitctl builds ambitctl once per test binary and returns its path.
func ambitctl(t *testing.T) string {
	t.Helper()
	ambitctlBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "ambt-ctl-bin-")
		if err != nil {
			ambitctlBin.err = err
			return
		}
		root, _ := filepath.Abs("../..")
		cmd := exec.Command("go", "build", "-o", dir+"/ambitctl", "./ctl/cmd/ambitctl")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			ambitctlBin.err = err
			ambitctlBin.path = string(out)
			return
		}
		ambitctlBin.path = filepath.Join(dir, "ambitctl")
	})
	if ambitctlBin.err != nil {
		t.Fatalf("building ambitctl: %v\n%s", ambitctlBin.err, ambitctlBin.path)
	}
	return ambitctlBin.path
}

type ctlResult struct {
	code           int
	stdout, stderr string
}

// runCtl runs ambitctl with a kubeconfig and returns its exit code and
// output.
func runCtl(t *testing.T, kubeconfig string, args ...string) ctlResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, ambitctl(t), append(args, "--kubeconfig", kubeconfig)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := ctlResult{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("ambitctl %v: %v", args, err)
	}
	t.Logf("ambitctl %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

func nsLabel(t *testing.T, c *cluster.Cluster, ns string) (string, bool) {
	t.Helper()
	n, err := c.Client.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v, ok := n.Labels[kube.LabelDataplaneMode]
	return v, ok
}

// freshNamespace deletes leftovers of a previous run (waiting until gone)
// and creates ns.
func freshNamespace(t *testing.T, c *cluster.Cluster, ns string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = c.Client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	if err := cluster.Eventually(ctx, "namespace "+ns+" gone", func(ctx context.Context) error {
		_, err := c.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err == nil {
			return os.ErrExist
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
}

func TestAmbitctlEnroll(t *testing.T) {
	c := cluster.Shared(t)
	freshNamespace(t, c, ctlNS)
	kc := c.Kubeconfig

	r := runCtl(t, kc, "enroll", ctlNS)
	if r.code != 0 || !strings.Contains(r.stdout, "namespace "+ctlNS+" enrolled") {
		t.Fatalf("enroll: %+v", r)
	}
	if v, _ := nsLabel(t, c, ctlNS); v != "ambient" {
		t.Fatalf("label after enroll = %q", v)
	}
	r = runCtl(t, kc, "enroll", ctlNS)
	if r.code != 0 || !strings.Contains(r.stdout, "already enrolled") {
		t.Errorf("second enroll: %+v", r)
	}

	// A pod enrolled by its own label stays enrolled: unenroll names it,
	// --pods takes the label off.
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "self-enrolled", Namespace: ctlNS, Labels: map[string]string{kube.LabelDataplaneMode: "ambient"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "example.invalid/none:1"}}},
	}
	if _, err := c.Client.CoreV1().Pods(ctlNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r = runCtl(t, kc, "unenroll", ctlNS)
	if r.code != 0 || !strings.Contains(r.stdout, "unenrolled") || !strings.Contains(r.stderr, "self-enrolled") {
		t.Fatalf("unenroll: %+v", r)
	}
	if v, ok := nsLabel(t, c, ctlNS); ok {
		t.Fatalf("label still there after unenroll: %q", v)
	}
	r = runCtl(t, kc, "unenroll", ctlNS, "--pods")
	if r.code != 0 || !strings.Contains(r.stdout, "was not enrolled") || !strings.Contains(r.stdout, "removed "+kube.LabelDataplaneMode+" from pods: self-enrolled") {
		t.Errorf("unenroll --pods: %+v", r)
	}
	p, err := c.Client.CoreV1().Pods(ctlNS).Get(ctx, "self-enrolled", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Labels[kube.LabelDataplaneMode]; ok {
		t.Errorf("pod label still there after unenroll --pods")
	}

	r = runCtl(t, kc, "enroll", "ambt-ctl-no-such-ns")
	if r.code != 1 || !strings.Contains(r.stderr, `namespace "ambt-ctl-no-such-ns" not found`) || !strings.Contains(r.stderr, "kubectl create namespace") {
		t.Errorf("unknown namespace: %+v", r)
	}
}

// restrictedKubeconfig writes a kubeconfig of a service account that may
// do nothing but what every authenticated user may.
func restrictedKubeconfig(t *testing.T, c *cluster.Cluster) string {
	t.Helper()
	ctx := context.Background()
	freshNamespace(t, c, ctlUserNS)
	if _, err := c.CreateServiceAccount(ctx, ctlUserNS, "nobody"); err != nil {
		t.Fatal(err)
	}
	tok, err := c.CreateToken(ctx, ctlUserNS, "nobody", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: c.Server, CertificateAuthority: c.CAFile}
	cfg.AuthInfos["nobody"] = &clientcmdapi.AuthInfo{Token: tok}
	cfg.Contexts["nobody"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "nobody"}
	cfg.CurrentContext = "nobody"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

type precheckJSON []struct {
	Name, Status, Message, Next string
}

func (p precheckJSON) status(name string) string {
	for _, c := range p {
		if c.Name == name {
			return c.Status
		}
	}
	return ""
}

func TestAmbitctlPrecheck(t *testing.T) {
	c := cluster.Shared(t)
	r := runCtl(t, c.Kubeconfig, "precheck", "-o", "json")
	var got precheckJSON
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("precheck -o json: %v\n%s", err, r.stdout)
	}
	if got.status("kubernetes-version") != "OK" || got.status("permissions") != "OK" {
		t.Errorf("admin precheck: %+v", got)
	}
	if s := got.status("istio-conflicts"); s == "" {
		t.Errorf("no conflict check: %+v", got)
	}
	if (r.code == 0) == (got.status("istio-conflicts") == "FAIL") {
		t.Errorf("exit code %d does not match the checks %+v", r.code, got)
	}
	text := runCtl(t, c.Kubeconfig, "precheck")
	if f := strings.Fields(text.stdout); len(f) < 4 || f[0] != "OK" || f[1] != "kubernetes-version" || !strings.HasPrefix(f[3], "v1.") {
		t.Errorf("text output: %s", text.stdout)
	}

	// A user without rights fails, naming what install needs.
	kc := restrictedKubeconfig(t, c)
	r = runCtl(t, kc, "precheck")
	if r.code != 3 || !strings.Contains(r.stdout, "FAIL  permissions") || !strings.Contains(r.stdout, "create customresourcedefinitions.apiextensions.k8s.io") {
		t.Errorf("restricted precheck: %+v", r)
	}
	// And its enroll is refused with the permission named.
	r = runCtl(t, kc, "enroll", "default")
	if r.code != 1 || !strings.Contains(r.stderr, "needs permission to get namespaces") {
		t.Errorf("restricted enroll: %+v", r)
	}
}

func TestAmbitctlVersion(t *testing.T) {
	c := cluster.Shared(t)
	freshNamespace(t, c, ctlSysNS)
	ctx := context.Background()
	one := int32(1)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: ctlSysNS,
			Labels: map[string]string{kube.LabelApp: kube.AppIstiod, kube.LabelVersion: "0.3.1", kube.LabelPartOf: kube.PartOfAmbit}},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{kube.LabelApp: kube.AppIstiod}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{kube.LabelApp: kube.AppIstiod}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "discovery", Image: "example.invalid/ambit/istiod:0.3.1"}}},
			},
		},
	}
	if _, err := c.Client.AppsV1().Deployments(ctlSysNS).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// ztunnel pods as a DaemonSet would make them (no kubelet runs them):
	// two on 0.3.1, one on 0.3.0.
	for i, tag := range []string{"0.3.1", "0.3.0", "0.3.1"} {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-" + string(rune('a'+i)), Namespace: ctlSysNS, Labels: map[string]string{kube.LabelApp: kube.AppZtunnel}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "ztunnel", Image: "example.invalid/ambit/ztunnel:" + tag}}},
		}
		if _, err := c.Client.CoreV1().Pods(ctlSysNS).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	r := runCtl(t, c.Kubeconfig, "version", "-o", "json", "-n", ctlSysNS)
	var v kube.Versions
	if err := json.Unmarshal([]byte(r.stdout), &v); r.code != 0 || err != nil {
		t.Fatalf("version -o json: %v %+v", err, r)
	}
	if v.Client == "" || len(v.ControlPlane) != 1 || v.ControlPlane[0].Version != "0.3.1" || v.ControlPlane[0].Name != "istiod" {
		t.Errorf("control plane: %+v", v)
	}
	want := []kube.DataPlaneCount{{Component: "ztunnel", Version: "0.3.0", Pods: 1}, {Component: "ztunnel", Version: "0.3.1", Pods: 2}}
	if len(v.DataPlane) != 2 || v.DataPlane[0] != want[0] || v.DataPlane[1] != want[1] {
		t.Errorf("data plane = %+v, want %+v", v.DataPlane, want)
	}
	r = runCtl(t, c.Kubeconfig, "version", "--short", "-n", ctlSysNS)
	for _, line := range []string{"control plane version: 0.3.1", "data plane version: 0.3.0 (1 ztunnel), 0.3.1 (2 ztunnels)"} {
		if !strings.Contains(r.stdout, line) {
			t.Errorf("version --short lacks %q:\n%s", line, r.stdout)
		}
	}
	// An empty namespace: nothing installed.
	r = runCtl(t, c.Kubeconfig, "version", "--short", "-n", ctlNS+"-none")
	if r.code != 0 || !strings.Contains(r.stdout, "control plane version: none") {
		t.Errorf("version in an empty namespace: %+v", r)
	}
}

const ctlInstallNS = "ambt-ctl-install"

// TestAmbitctlInstall installs, upgrades and purges the embedded chart in
// the real API server. No kubelet runs there, so istiod never gets ready:
// --wait must say so, naming it.
func TestAmbitctlInstall(t *testing.T) {
	c := cluster.Shared(t)
	kc := c.Kubeconfig
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	crdDir, _ := filepath.Abs("../../deploy/charts/ambit/crds")
	// Leave the CRDs as found: purge deletes them.
	if _, err := c.Client.Discovery().ServerResourcesForGroupVersion("security.istio.io/v1"); err == nil {
		t.Cleanup(func() {
			if _, err := cluster.ApplyCRDs(context.Background(), c.Config, crdDir); err != nil {
				t.Errorf("restoring the CRDs: %v", err)
			}
		})
	}
	freshNamespace(t, c, ctlInstallNS)

	// --dry-run: YAML of the kinds the chart holds, CRDs first.
	r := runCtl(t, kc, "install", "--dry-run", "-n", ctlInstallNS, "--set", "ztunnel.logLevel=debug")
	if r.code != 0 {
		t.Fatalf("install --dry-run: %+v", r)
	}
	kinds := map[string]int{}
	names := map[string]bool{}
	first := ""
	for _, doc := range strings.Split(r.stdout, "\n---\n") {
		var obj struct {
			Kind     string
			Metadata struct{ Name, Namespace string }
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("dry-run output is not YAML: %v\n%s", err, doc)
		}
		if obj.Kind == "" {
			continue
		}
		if first == "" {
			first = obj.Kind
		}
		kinds[obj.Kind]++
		names[obj.Kind+"/"+obj.Metadata.Name] = true
		if obj.Metadata.Namespace != "" && obj.Metadata.Namespace != ctlInstallNS {
			t.Errorf("%s/%s in namespace %s, want %s", obj.Kind, obj.Metadata.Name, obj.Metadata.Namespace, ctlInstallNS)
		}
	}
	if first != "CustomResourceDefinition" || kinds["CustomResourceDefinition"] < 10 {
		t.Errorf("CRDs: first kind %s, %d CRDs", first, kinds["CustomResourceDefinition"])
	}
	for _, want := range []string{"Deployment/istiod", "DaemonSet/ztunnel", "DaemonSet/cni-agent", "Service/istiod", "ServiceAccount/ztunnel",
		"CustomResourceDefinition/authorizationpolicies.security.istio.io", "CustomResourceDefinition/httproutes.gateway.networking.k8s.io"} {
		if !names[want] {
			t.Errorf("dry run lacks %s (kinds %v)", want, kinds)
		}
	}
	if !strings.Contains(r.stdout, "--log-level=debug") {
		t.Errorf("--set ztunnel.logLevel=debug not rendered")
	}
	if _, err := c.Client.AppsV1().Deployments(ctlInstallNS).Get(ctx, "istiod", metav1.GetOptions{}); err == nil {
		t.Fatal("--dry-run created istiod")
	}

	// install --wait: the release is applied, and the wait names istiod.
	r = runCtl(t, kc, "install", "-n", ctlInstallNS, "--wait", "--timeout", "8s")
	if r.code != 1 || !strings.Contains(r.stderr, "waiting for: ") || !strings.Contains(r.stderr, "Deployment istiod 0/1") || !strings.Contains(r.stderr, "not ready after 8s") {
		t.Errorf("install --wait without a kubelet: %+v", r)
	}
	dep, err := c.Client.AppsV1().Deployments(ctlInstallNS).Get(ctx, "istiod", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("istiod not installed: %v", err)
	}
	if dep.Labels[kube.LabelPartOf] != kube.PartOfAmbit {
		t.Errorf("istiod labels %v", dep.Labels)
	}
	if fm := dep.ManagedFields; len(fm) == 0 || fm[0].Operation != metav1.ManagedFieldsOperationApply {
		t.Errorf("istiod not server-side applied: %+v", fm)
	}
	r = runCtl(t, kc, "install", "-n", ctlInstallNS)
	if r.code != 1 || !strings.Contains(r.stderr, "use ambitctl upgrade") {
		t.Errorf("second install: %+v", r)
	}

	r = runCtl(t, kc, "upgrade", "-n", ctlInstallNS, "--set", "ztunnel.logLevel=debug")
	if r.code != 0 || !strings.Contains(r.stderr, fmt.Sprintf("applied %d CRDs", kinds["CustomResourceDefinition"])) {
		t.Errorf("upgrade: %+v", r)
	}
	ds, err := c.Client.AppsV1().DaemonSets(ctlInstallNS).Get(ctx, "ztunnel", metav1.GetOptions{})
	if err != nil || !strings.Contains(strings.Join(ds.Spec.Template.Spec.Containers[0].Args, " "), "--log-level=debug") {
		t.Errorf("upgrade did not roll ztunnel's log level: %v", err)
	}

	r = runCtl(t, kc, "version", "--short", "-n", ctlInstallNS)
	if !strings.Contains(r.stdout, "control plane version: "+dep.Labels[kube.LabelVersion]) {
		t.Errorf("version after install: %+v", r)
	}
	r = runCtl(t, kc, "precheck", "-n", ctlInstallNS)
	if !strings.Contains(r.stdout, "Ambit is already installed") {
		t.Errorf("precheck after install: %+v", r)
	}

	// The trust bundle istiod publishes goes with the release. (Another
	// test's istiod on the shared cluster may have published it here
	// already, and may publish it again after the uninstall: the check is
	// that uninstall deleted it.)
	published := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: rootcert.ConfigMapName, Namespace: ctlInstallNS,
		Labels: map[string]string{rootcert.LabelKey: rootcert.LabelValue}}, Data: map[string]string{rootcert.DataKey: "x"}}
	if _, err := c.Client.CoreV1().ConfigMaps(ctlInstallNS).Create(ctx, published, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	r = runCtl(t, kc, "uninstall", "-n", ctlInstallNS, "--purge")
	if r.code != 0 || !strings.Contains(r.stderr, "CustomResourceDefinition authorizationpolicies.security.istio.io") ||
		!strings.Contains(r.stderr, "ConfigMap "+ctlInstallNS+"/"+rootcert.ConfigMapName) {
		t.Errorf("uninstall --purge: %+v", r)
	}
	if _, err := c.Client.AppsV1().Deployments(ctlInstallNS).Get(ctx, "istiod", metav1.GetOptions{}); err == nil {
		t.Error("istiod still there after uninstall")
	}
	if err := cluster.Eventually(ctx, "CRDs gone", func(context.Context) error {
		_, err := c.Client.Discovery().ServerResourcesForGroupVersion("security.istio.io/v1")
		if err == nil {
			return os.ErrExist
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	r = runCtl(t, kc, "uninstall", "-n", ctlInstallNS)
	if r.code != 1 || !strings.Contains(r.stderr, "no release ambit") {
		t.Errorf("second uninstall: %+v", r)
	}
}
