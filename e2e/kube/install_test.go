package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/ambit-mesh/ambit/cni/install"
	ctlinstall "github.com/ambit-mesh/ambit/ctl/install"
	ctlkube "github.com/ambit-mesh/ambit/ctl/kube"
	"github.com/ambit-mesh/ambit/deploy/images"
	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/realnode"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

const (
	realInstallNS   = "istio-system"
	realAppNS       = "ambt-install-app"
	realImageVer    = "0.1.0-dev"
	realNextVer     = "0.1.1-dev" // the istiod the control plane is upgraded to
	realHub         = "localhost/ambit"
	realIstiodPort  = 15012
	realZtunnelPort = 15020
	realAdminPort   = 15000
)

// TestInstallRealNode is issue 8's day one on a real kubelet + containerd
// node (package realnode) in a cluster of its own (the package's shared
// cluster has no scheduler): import Ambit's images into the node's
// containerd, helm install the chart, enroll a namespace and see mTLS
// between two pods, helm upgrade ztunnel while a client keeps opening
// connections, helm uninstall and see the node clean.
//
// The node runs kube-proxy, and the harness points the kubernetes Service
// at its API server forwarder (the API server's certificate names
// 10.96.0.1), so istiod and the agent use in-cluster config. Two gaps of
// the node are bridged here:
//   - No cluster DNS: ztunnel reaches istiod through the chart value
//     ztunnel.istiodAddress = HostIP:15012, where the test relays each
//     connection to the istiod pod's IP (looked up per connection); the
//     certificate is still checked against istiod.istio-system.svc.
//
// The node's containerd mounts pods' netns in /var/run/netns
// (Options.PodNetnsInVarRun), where the chart's cni-agent looks, so the
// CNI ADD's netns path opens inside the agent.
//
// Traffic is sent from inside the client pod's network namespace (the
// test enters it), so the pod's capture rules and its ztunnel handle it.
func TestInstallRealNode(t *testing.T) {
	netnstest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	begin := time.Now()
	c := cluster.StartT(t, cluster.Options{Scheduler: true, NodeLifecycle: true})
	t.Logf("timing: cluster up after %.1fs", time.Since(begin).Seconds())

	step := time.Now()
	tars := buildRealImages(ctx, t)
	t.Logf("timing: images built after %.1fs", time.Since(step).Seconds())

	step = time.Now()
	n := realnode.StartT(t, realnode.Options{Cluster: c, PodNetnsInVarRun: true,
		PauseImage: images.Tag(realHub, images.Pause.Name, realImageVer), PauseImageTar: tars["pause"],
		Images: []string{tars["istiod"], tars["ztunnel"], tars["cni-agent"], tars["ambit-echo"]}})
	t.Logf("timing: node %s Ready after %.1fs (images imported)", n.Name, time.Since(step).Seconds())
	relayIstiod(ctx, t, c, n)

	// Step 1: install.
	step = time.Now()
	getter := genericclioptions.NewConfigFlags(false)
	getter.KubeConfig = &c.Kubeconfig
	opts := ctlinstall.Options{
		Getter: getter, Namespace: realInstallNS, Wait: true, Timeout: 5 * time.Minute,
		Progress: logWriter{t},
		Set: []string{
			"global.hub=" + realHub,
			"global.pullPolicy=Never",
			"cni.binDir=" + n.CNIBinDir,
			"cni.confDir=" + n.CNIConfDir,
			fmt.Sprintf("ztunnel.istiodAddress=%s:%d", n.HostIP, realIstiodPort),
			// Two cores shared with the cluster and the node.
			"istiod.resources.requests.cpu=100m", "istiod.resources.requests.memory=128Mi",
			"ztunnel.resources.requests.cpu=50m", "ztunnel.resources.requests.memory=64Mi",
			"cni.resources.requests.cpu=50m", "cni.resources.requests.memory=64Mi",
		},
	}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: realInstallNS}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err := ctlinstall.Install(ctx, opts); err != nil {
		dumpRealPods(ctx, t, c, n, realInstallNS)
		t.Fatalf("helm install: %v", err)
	}
	t.Logf("timing: helm install until istiod, ztunnel and cni-agent Ready: %.1fs", time.Since(step).Seconds())
	conflist := findConflist(t, n.CNIConfDir)
	realPoll(ctx, t, "ambit-cni in the node's conflist "+conflist, func() error {
		if !hasPlugin(conflist) {
			return fmt.Errorf("no %q plugin in %s", install.PluginType, conflist)
		}
		return nil
	})
	plugin := filepath.Join(n.CNIBinDir, install.PluginType)
	if _, err := os.Stat(plugin); err != nil {
		t.Errorf("plugin binary: %v", err)
	}
	t.Logf("timing: step 1 (install) done after %.1fs", time.Since(step).Seconds())

	// Step 2: enroll a namespace, two pods, mTLS between them.
	step = time.Now()
	if _, err := c.CreateNamespace(ctx, realAppNS, map[string]string{"istio.io/dataplane-mode": "ambient"}); err != nil {
		t.Fatal(err)
	}
	server := startEchoPod(ctx, t, c, "server")
	client := startEchoPod(ctx, t, c, "client")
	serverURL := "http://" + net.JoinHostPort(server.Status.PodIP, "8080")
	clientNS := podNetns(ctx, t, n, client.Name)
	serverNS := podNetns(ctx, t, n, server.Name)
	for _, p := range []string{clientNS, serverNS} {
		if !nftTable(p) {
			t.Errorf("no capture table in %s", p)
		}
	}
	zt := ztunnelPod(ctx, t, c)
	metrics := ctlkube.PodHTTP{Client: &ctlkube.Client{Config: c.Config, Clientset: c.Client}, Namespace: realInstallNS, Pod: zt, Port: realZtunnelPort}
	wantLabels := map[string]string{
		"connection_security_policy": "mutual_tls",
		"source_principal":           "spiffe://cluster.local/ns/" + realAppNS + "/sa/client",
		"destination_principal":      "spiffe://cluster.local/ns/" + realAppNS + "/sa/server",
	}
	var answer, text string
	realPoll(ctx, t, "a GET from the client counted as mutual_tls by ztunnel", func() error {
		var err error
		if answer, err = get(ctx, clientNS, serverURL+"/install", 5*time.Second); err != nil {
			return err
		}
		b, err := metrics.Get(ctx, "/stats/prometheus")
		if err != nil {
			return err
		}
		text = string(b)
		if !hasMetric(text, "istio_tcp_connections_opened_total", wantLabels) {
			return fmt.Errorf("no istio_tcp_connections_opened_total with %v", wantLabels)
		}
		return nil
	})
	t.Logf("through the mesh: %s", strings.TrimSpace(answer))
	admin := metrics
	admin.Port = realAdminPort
	dump, err := admin.Get(ctx, "/config_dump")
	if err != nil {
		t.Fatalf("ztunnel /config_dump through port-forward: %v", err)
	}
	for _, want := range []string{"spiffe://cluster.local/ns/" + realAppNS + "/sa/server", server.Status.PodIP, client.Status.PodIP} {
		if !strings.Contains(string(dump), want) {
			t.Errorf("ztunnel /config_dump lacks %q", want)
		}
	}
	r := runCtl(t, c.Kubeconfig, "ztunnel-config", "workloads")
	if r.code != 0 || !strings.Contains(r.stdout, "server") || !strings.Contains(r.stdout, server.Status.PodIP) {
		t.Errorf("ambitctl ztunnel-config workloads: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	} else {
		t.Logf("ambitctl ztunnel-config workloads:\n%s", r.stdout)
	}
	r = runCtl(t, c.Kubeconfig, "ztunnel-config", "certificates")
	if r.code != 0 || !strings.Contains(r.stdout, "spiffe://cluster.local/ns/"+realAppNS+"/sa/server") || !strings.Contains(r.stdout, "spiffe://cluster.local/ns/"+realAppNS+"/sa/client") {
		t.Errorf("ambitctl ztunnel-config certificates: exit %d, want both pods' SPIFFE IDs\n%s\n%s", r.code, r.stdout, r.stderr)
	} else {
		t.Logf("ambitctl ztunnel-config certificates:\n%s", r.stdout)
	}
	t.Logf("timing: step 2 (enroll, mTLS, config_dump) done after %.1fs", time.Since(step).Seconds())

	// Step 3: upgrade ztunnel's log level while the client keeps calling.
	step = time.Now()
	traffic := startLoad(ctx, clientNS, serverURL+"/during-upgrade")
	before := dsGeneration(ctx, t, c, "ztunnel")
	up := opts
	up.Set = append(append([]string(nil), opts.Set...), "ztunnel.logLevel=debug")
	if err := ctlinstall.Upgrade(ctx, up); err != nil {
		traffic.stop()
		t.Fatalf("helm upgrade: %v", err)
	}
	realPoll(ctx, t, "the ztunnel DaemonSet rolled out", func() error {
		ds, err := c.Client.AppsV1().DaemonSets(realInstallNS).Get(ctx, "ztunnel", metav1.GetOptions{})
		if err != nil {
			return err
		}
		return dsRolledOut(ds, before)
	})
	newZt := ztunnelPod(ctx, t, c)
	rolled := time.Since(step)
	// Keep calling past the roll: 20 more connections, through the new ztunnel.
	atRoll := traffic.calls.Load()
	realPoll(ctx, t, "20 more calls after the roll", func() error {
		if got := traffic.calls.Load() - atRoll; got < 20 {
			return fmt.Errorf("%d calls", got)
		}
		return nil
	})
	calls, failures := traffic.stop()
	t.Logf("timing: step 3 (upgrade rolled ztunnel %s -> %s) after %.1fs; new connections during it: %d, failed: %d",
		zt, newZt, rolled.Seconds(), calls, len(failures))
	if newZt == zt {
		t.Errorf("ztunnel pod %s was not replaced by the upgrade", zt)
	}
	if calls == 0 {
		t.Errorf("the client made no call during the upgrade")
	}
	if len(failures) > 0 {
		t.Errorf("%d of %d new connections failed during the upgrade; first: %v", len(failures), calls, failures[:min(5, len(failures))])
	}

	// The new ztunnel carries the client's connections.
	newMetrics := metrics
	newMetrics.Pod = newZt
	realPoll(ctx, t, "the new ztunnel counting the client's mutual_tls connections", func() error {
		if _, err := get(ctx, clientNS, serverURL+"/after-upgrade", 5*time.Second); err != nil {
			return err
		}
		b, err := newMetrics.Get(ctx, "/stats/prometheus")
		if err != nil {
			return err
		}
		if !hasMetric(string(b), "istio_tcp_connections_opened_total", wantLabels) {
			return fmt.Errorf("no istio_tcp_connections_opened_total with %v on %s", wantLabels, newZt)
		}
		return nil
	})

	// Step 3b: the control plane is upgraded before the data plane: a newer
	// istiod (its own version) rolls while the client keeps calling, and
	// the ztunnel of the older version syncs with it. The CA root lives in
	// istio-ca-secret, so the new istiod signs with the same root.
	step = time.Now()
	nextTar := buildIstiodImage(ctx, t, realNextVer)
	if err := n.ImportImage(ctx, nextTar); err != nil {
		t.Fatalf("importing istiod %s: %v", realNextVer, err)
	}
	traffic = startLoad(ctx, clientNS, serverURL+"/during-istiod-upgrade")
	cpUp := up
	cpUp.Set = append(append([]string(nil), up.Set...), "istiod.image.tag="+realNextVer)
	if err := ctlinstall.Upgrade(ctx, cpUp); err != nil {
		traffic.stop()
		t.Fatalf("helm upgrade of istiod: %v", err)
	}
	var newIstiod string
	realPoll(ctx, t, "istiod "+realNextVer+" the only istiod pod, Ready", func() error {
		pods, err := c.Client.CoreV1().Pods(realInstallNS).List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
		if err != nil {
			return err
		}
		if len(pods.Items) != 1 {
			return fmt.Errorf("%d istiod pods", len(pods.Items))
		}
		p := pods.Items[0]
		if img := p.Spec.Containers[0].Image; !strings.HasSuffix(img, ":"+realNextVer) || !podReady(&p) {
			return fmt.Errorf("istiod pod %s: image %s, ready %v", p.Name, img, podReady(&p))
		}
		newIstiod = p.Name
		return nil
	})
	atRoll = traffic.calls.Load()
	realPoll(ctx, t, "20 more calls after istiod rolled", func() error {
		if got := traffic.calls.Load() - atRoll; got < 20 {
			return fmt.Errorf("%d calls", got)
		}
		return nil
	})
	calls, failures = traffic.stop()
	t.Logf("timing: step 3b (istiod upgraded to %s, pod %s) after %.1fs; new connections during it: %d, failed: %d",
		realNextVer, newIstiod, time.Since(step).Seconds(), calls, len(failures))
	if len(failures) > 0 {
		t.Errorf("%d of %d new connections failed while istiod was upgraded; first: %v", len(failures), calls, failures[:min(5, len(failures))])
	}
	realPoll(ctx, t, "ztunnel "+realImageVer+" synced with istiod "+realNextVer+" (ambitctl proxy-status)", func() error {
		r := runCtl(t, c.Kubeconfig, "proxy-status", "-n", realInstallNS)
		if r.code != 0 {
			return fmt.Errorf("exit %d: %s", r.code, r.stderr)
		}
		if !strings.Contains(r.stdout, newZt) || !strings.Contains(r.stdout, realImageVer) || !strings.Contains(r.stdout, "SYNCED") || strings.Contains(r.stdout, "STALE") {
			return fmt.Errorf("want %s (%s) SYNCED:\n%s", newZt, realImageVer, r.stdout)
		}
		t.Logf("ambitctl proxy-status after the istiod upgrade:\n%s", r.stdout)
		return nil
	})

	// Step 4: uninstall.
	step = time.Now()
	agentLog := followLogs(ctx, t, c, realInstallNS, "app=cni-agent")
	removed, err := ctlinstall.Uninstall(ctx, opts, false)
	if err != nil {
		t.Fatalf("helm uninstall: %v", err)
	}
	t.Logf("uninstall removed %v", removed)
	checks := []struct {
		what  string
		check func() error
	}{
		{"no pod left in " + realInstallNS, func() error {
			pods, err := c.Client.CoreV1().Pods(realInstallNS).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			if len(pods.Items) > 0 {
				return fmt.Errorf("%d pods left", len(pods.Items))
			}
			return nil
		}},
		{"no object of the chart left", func() error { return chartLeftovers(ctx, c) }},
		{"conflist restored", func() error {
			if hasPlugin(conflist) {
				return fmt.Errorf("%s still has %s", conflist, install.PluginType)
			}
			return nil
		}},
		{"pods released (no capture table)", func() error {
			for _, p := range []string{clientNS, serverNS} {
				if nftTable(p) {
					return fmt.Errorf("capture table still in %s", p)
				}
			}
			return nil
		}},
		{"plugin binary removed", func() error {
			if _, err := os.Stat(plugin); err == nil {
				return fmt.Errorf("%s still there", plugin)
			}
			return nil
		}},
	}
	for _, ch := range checks {
		if err := realWait(ctx, time.Minute, ch.check); err != nil {
			t.Errorf("after uninstall, %s: %v", ch.what, err)
		} else {
			t.Logf("timing: after uninstall, %s at %.1fs", ch.what, time.Since(step).Seconds())
		}
	}
	t.Logf("cni-agent's log until its exit:\n%s", agentLog.tail(40))
	if answer, err := get(ctx, clientNS, serverURL+"/after-uninstall", 5*time.Second); err != nil {
		t.Errorf("plain networking after uninstall: %v", err)
	} else {
		t.Logf("plain, after uninstall: %s", strings.TrimSpace(answer))
	}
	for _, name := range []string{server.Name, client.Name} {
		p, err := c.Client.CoreV1().Pods(realAppNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase != corev1.PodRunning || p.UID != map[string]*corev1.Pod{server.Name: server, client.Name: client}[name].UID ||
			len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].RestartCount != 0 {
			t.Errorf("pod %s after uninstall: phase %s, containers %+v; want the same pod Running, never restarted", name, p.Status.Phase, p.Status.ContainerStatuses)
		}
	}
	del := time.Now()
	if err := c.Client.CoreV1().Pods(realAppNS).Delete(ctx, server.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	delCtx, delCancel := context.WithTimeout(ctx, time.Minute)
	defer delCancel()
	realPoll(delCtx, t, "pod server deleted after uninstall", func() error {
		_, err := c.Client.CoreV1().Pods(realAppNS).Get(ctx, server.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	t.Logf("timing: pod deleted after uninstall in %.1fs; step 4 done after %.1fs; all after %.1fs",
		time.Since(del).Seconds(), time.Since(step).Seconds(), time.Since(begin).Seconds())
}

// buildRealImages builds istiod, ztunnel, cni-agent and pause as `make
// images` does, plus an ambit-echo image, into tarballs.
func buildRealImages(ctx context.Context, t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	b := images.NewBuilder(images.Options{Version: realImageVer, Progress: logWriter{t}})
	defer b.Close()
	echo := images.Spec{
		Name:        "ambit-echo",
		Description: "Test HTTP/TCP/gRPC echo server and client",
		Binaries:    []images.Binary{{Package: images.Module + "/e2e/echo/cmd/ambit-echo", Path: "/usr/local/bin/ambit-echo"}},
		User:        "1000:1000",
	}
	out := map[string]string{}
	for _, s := range []images.Spec{images.Istiod, images.Ztunnel, images.CNIAgent, images.Pause, echo} {
		img, err := b.Build(ctx, s)
		if err != nil {
			t.Fatalf("image %s: %v", s.Name, err)
		}
		out[s.Name] = filepath.Join(dir, s.Name+".tar")
		if err := images.WriteTarball(out[s.Name], images.Tag(realHub, s.Name, realImageVer), img); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// buildIstiodImage builds istiod at version into a tarball tagged so.
func buildIstiodImage(ctx context.Context, t *testing.T, version string) string {
	t.Helper()
	b := images.NewBuilder(images.Options{Version: version, Progress: logWriter{t}})
	defer b.Close()
	img, err := b.Build(ctx, images.Istiod)
	if err != nil {
		t.Fatalf("image istiod %s: %v", version, err)
	}
	path := filepath.Join(t.TempDir(), "istiod-"+version+".tar")
	if err := images.WriteTarball(path, images.Tag(realHub, images.Istiod.Name, version), img); err != nil {
		t.Fatal(err)
	}
	return path
}

// relayIstiod relays connections to HostIP:15012 to the istiod pod's IP.
func relayIstiod(ctx context.Context, t *testing.T, c *cluster.Cluster, n *realnode.Node) {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(n.HostIP.String(), strconv.Itoa(realIstiodPort)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				pods, err := c.Client.CoreV1().Pods(realInstallNS).List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
				if err != nil {
					return
				}
				for _, p := range pods.Items {
					if p.Status.PodIP == "" || p.DeletionTimestamp != nil {
						continue
					}
					up, err := net.DialTimeout("tcp", net.JoinHostPort(p.Status.PodIP, strconv.Itoa(realIstiodPort)), 5*time.Second)
					if err != nil {
						continue
					}
					defer up.Close()
					done := make(chan struct{}, 2)
					go func() { _, _ = io.Copy(up, conn); done <- struct{}{} }()
					go func() { _, _ = io.Copy(conn, up); done <- struct{}{} }()
					<-done
					return
				}
			}()
		}
	}()
}

// startEchoPod runs ambit-echo server as pod name, with service account
// name, in realAppNS, and returns it Running.
func startEchoPod(ctx context.Context, t *testing.T, c *cluster.Cluster, name string) *corev1.Pod {
	t.Helper()
	if _, err := c.CreateServiceAccount(ctx, realAppNS, name); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: realAppNS, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			ServiceAccountName: name,
			Containers: []corev1.Container{{
				Name: "echo", Image: images.Tag(realHub, "ambit-echo", realImageVer), ImagePullPolicy: corev1.PullNever,
				Args:  []string{"server", "-name", name},
				Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
			}},
			TerminationGracePeriodSeconds: new(int64(2)),
			AutomountServiceAccountToken:  new(false),
		},
	}
	begin := time.Now()
	if _, err := c.Client.CoreV1().Pods(realAppNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var running *corev1.Pod
	realPoll(ctx, t, "pod "+name+" Running", func() error {
		p, err := c.Client.CoreV1().Pods(realAppNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			return fmt.Errorf("phase %s, conditions %v, containers %v", p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses)
		}
		running = p
		return nil
	})
	t.Logf("timing: pod %s Running after %.1fs (ip %s)", name, time.Since(begin).Seconds(), running.Status.PodIP)
	return running
}

// podNetns returns the network namespace path of the pod's sandbox, from
// containerd.
func podNetns(ctx context.Context, t *testing.T, n *realnode.Node, pod string) string {
	t.Helper()
	id, err := n.Crictl(ctx, "pods", "-q", "--name", "^"+pod+"$", "--namespace", realAppNS, "--state", "ready")
	if err != nil || strings.TrimSpace(string(id)) == "" {
		t.Fatalf("crictl pods --name %s: %v %q", pod, err, id)
	}
	out, err := n.Crictl(ctx, "inspectp", strings.Fields(string(id))[0])
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Info struct {
			RuntimeSpec struct {
				Linux struct {
					Namespaces []struct{ Type, Path string }
				}
			}
		}
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("crictl inspectp: %v", err)
	}
	for _, ns := range info.Info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" && ns.Path != "" {
			return ns.Path
		}
	}
	t.Fatalf("no network namespace for pod %s in crictl inspectp: %s", pod, out)
	return ""
}

// ztunnelPod returns the name of the one ready, not deleting ztunnel pod.
func ztunnelPod(ctx context.Context, t *testing.T, c *cluster.Cluster) string {
	t.Helper()
	var name string
	realPoll(ctx, t, "one ready ztunnel pod", func() error {
		pods, err := c.Client.CoreV1().Pods(realInstallNS).List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
		if err != nil {
			return err
		}
		var ready []string
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && podReady(&p) {
				ready = append(ready, p.Name)
			}
		}
		if len(ready) != 1 || len(pods.Items) != 1 {
			return fmt.Errorf("ztunnel pods %d, ready %v", len(pods.Items), ready)
		}
		name = ready[0]
		return nil
	})
	return name
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func dsGeneration(ctx context.Context, t *testing.T, c *cluster.Cluster, name string) int64 {
	t.Helper()
	ds, err := c.Client.AppsV1().DaemonSets(realInstallNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ds.Generation
}

// dsRolledOut says why ds has not finished rolling out a generation newer
// than before.
func dsRolledOut(ds *appsv1.DaemonSet, before int64) error {
	s := ds.Status
	switch {
	case ds.Generation <= before:
		return fmt.Errorf("generation %d not past %d", ds.Generation, before)
	case s.ObservedGeneration < ds.Generation:
		return fmt.Errorf("observed generation %d < %d", s.ObservedGeneration, ds.Generation)
	case s.UpdatedNumberScheduled != s.DesiredNumberScheduled || s.NumberAvailable != s.DesiredNumberScheduled || s.CurrentNumberScheduled != s.DesiredNumberScheduled:
		return fmt.Errorf("updated %d, available %d, current %d of %d", s.UpdatedNumberScheduled, s.NumberAvailable, s.CurrentNumberScheduled, s.DesiredNumberScheduled)
	}
	return nil
}

// load opens one new connection (a GET) every 100ms from nsPath until
// stop, at most for 10 minutes.
type load struct {
	calls    atomic.Int64
	mu       sync.Mutex
	failures []string
	done     chan struct{}
	wg       sync.WaitGroup
}

func startLoad(ctx context.Context, nsPath, url string) *load {
	l := &load{done: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		deadline := time.Now().Add(10 * time.Minute)
		for time.Now().Before(deadline) {
			select {
			case <-l.done:
				return
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			l.calls.Add(1)
			if _, err := get(ctx, nsPath, url, 5*time.Second); err != nil {
				l.mu.Lock()
				l.failures = append(l.failures, time.Now().Format("15:04:05.000")+" "+err.Error())
				l.mu.Unlock()
			}
		}
	}()
	return l
}

func (l *load) stop() (int64, []string) {
	close(l.done)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls.Load(), l.failures
}

// findConflist returns the node's one *.conflist.
func findConflist(t *testing.T, dir string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*.conflist"))
	if len(m) != 1 {
		t.Fatalf("conflists in %s: %v, want one", dir, m)
	}
	return m[0]
}

// dumpRealPods logs the pods of ns and the tail of each container's log.
func dumpRealPods(ctx context.Context, t *testing.T, c *cluster.Cluster, n *realnode.Node, ns string) {
	t.Helper()
	pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Logf("listing pods: %v", err)
		return
	}
	for _, p := range pods.Items {
		t.Logf("pod %s: phase %s, ip %s, containers %+v", p.Name, p.Status.Phase, p.Status.PodIP, p.Status.ContainerStatuses)
		tail := int64(30)
		for _, prev := range []bool{false, true} {
			b, err := c.Client.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &tail, Previous: prev}).Do(ctx).Raw()
			if err == nil && len(b) > 0 {
				t.Logf("pod %s logs (previous=%v):\n%s", p.Name, prev, b)
			}
		}
	}
	if out, err := n.Crictl(ctx, "ps", "-a"); err == nil {
		t.Logf("crictl ps -a:\n%s", out)
	}
}

// chartLeftovers names the objects labelled as the chart's
// (app.kubernetes.io/part-of=ambit) still in the cluster.
func chartLeftovers(ctx context.Context, c *cluster.Cluster) error {
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/part-of=ambit"}
	var left []string
	add := func(kind string, n int, err error) {
		if err != nil {
			left = append(left, kind+": "+err.Error())
		} else if n > 0 {
			left = append(left, fmt.Sprintf("%d %s", n, kind))
		}
	}
	cs := c.Client
	d, err := cs.AppsV1().Deployments("").List(ctx, sel)
	add("Deployments", len(d.Items), err)
	ds, err := cs.AppsV1().DaemonSets("").List(ctx, sel)
	add("DaemonSets", len(ds.Items), err)
	svc, err := cs.CoreV1().Services("").List(ctx, sel)
	add("Services", len(svc.Items), err)
	sa, err := cs.CoreV1().ServiceAccounts("").List(ctx, sel)
	add("ServiceAccounts", len(sa.Items), err)
	cm, err := cs.CoreV1().ConfigMaps("").List(ctx, sel)
	add("ConfigMaps", len(cm.Items), err)
	cr, err := cs.RbacV1().ClusterRoles().List(ctx, sel)
	add("ClusterRoles", len(cr.Items), err)
	crb, err := cs.RbacV1().ClusterRoleBindings().List(ctx, sel)
	add("ClusterRoleBindings", len(crb.Items), err)
	ro, err := cs.RbacV1().Roles("").List(ctx, sel)
	add("Roles", len(ro.Items), err)
	rb, err := cs.RbacV1().RoleBindings("").List(ctx, sel)
	add("RoleBindings", len(rb.Items), err)
	pdb, err := cs.PolicyV1().PodDisruptionBudgets("").List(ctx, sel)
	add("PodDisruptionBudgets", len(pdb.Items), err)
	if len(left) > 0 {
		return fmt.Errorf("left: %s", strings.Join(left, ", "))
	}
	return nil
}

// realWait calls check every 200ms until it succeeds (nil) or d passes
// (its last error).
func realWait(ctx context.Context, d time.Duration, check func() error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// podLogs collects the logs of the pods a selector matched when
// followLogs started, until they end.
type podLogs struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *podLogs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// tail returns the last n lines.
func (l *podLogs) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := strings.Split(strings.TrimRight(l.buf.String(), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// followLogs follows the logs of the pods of ns matching selector.
func followLogs(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, selector string) *podLogs {
	t.Helper()
	pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	l := &podLogs{}
	since := int64(1)
	for _, p := range pods.Items {
		rc, err := c.Client.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Follow: true, SinceSeconds: &since}).Stream(ctx)
		if err != nil {
			t.Fatalf("following the logs of %s/%s: %v", ns, p.Name, err)
		}
		go func() {
			defer rc.Close()
			_, _ = io.Copy(l, rc)
		}()
	}
	return l
}

// realPoll calls check every 200ms until it succeeds or ctx ends (then
// fails t).
func realPoll(ctx context.Context, t *testing.T, what string, check func() error) {
	t.Helper()
	var last error
	for {
		if last = check(); last == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last: %v)", what, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
