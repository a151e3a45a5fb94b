package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/cni/agent"
	"github.com/ambit-mesh/ambit/cni/install"
	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/testnode"
	"github.com/ambit-mesh/ambit/pkg/enrollment"
)

// Bounds of the node agent's lifecycle cases.
const (
	// enrollCaptureWithin bounds enrolling a running namespace until all
	// its pods hold capture rules and the captured mark: the agent's
	// share is a second; the rest is the API server's watch and the mark's
	// round trip.
	enrollCaptureWithin = 3 * time.Second
	// failClosedFor is how long a pod created while its node's agent is
	// down is watched not starting.
	failClosedFor = 3 * time.Second
	// restartWithin bounds a pod created while the agent was down starting
	// captured once the agent and ztunnel are back (the test node's ADD
	// retries back off up to 5s).
	restartWithin = 30 * time.Second
)

// TestKubeAgentLifecycle runs the node agent's lifecycle cases on the test
// nodes, whose pods' processes run in pod cgroups as kubelet's and whose
// ADD precedes the sandbox process as containerd's; the agents do not
// trust the netns annotation, so running pods are found from /proc.
func TestKubeAgentLifecycle(t *testing.T) {
	m := newMesh(t)
	ctx := context.Background()
	ambient := map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeAmbient}
	m.namespace(ctx, "kagent", nil)
	echoServer := []string{"ambit-echo", "server", "-grpc", "", "-raw", ""}
	server := m.pod(ctx, "kagent", "server", nodeB, echoServer)
	client := m.pod(ctx, "kagent", "client", nodeA, nil)
	serverURL := fmt.Sprintf("http://%s/", net.JoinHostPort(server.Status.PodIP, "8080"))

	t.Run("EnrollRunningNamespace", func(t *testing.T) {
		for _, p := range []*corev1.Pod{server, client} {
			m.waitCaptured(t, p, false)
		}
		m.mustGet(t, client, serverURL, convergeWithin) // plain
		start := time.Now()
		m.labelNamespace(t, "kagent", ambient)
		rules, marked := m.waitAllCaptured(t, []*corev1.Pod{server, client}, start, enrollCaptureWithin)
		t.Logf("running namespace enrolled: both running pods' capture rules in place %v after the label, marked %v after it",
			rules.Round(time.Millisecond), marked.Round(time.Millisecond))
		if rules > time.Second {
			t.Errorf("capture rules in place %v after the label, want within a second", rules)
		}
		// Until istiod has pushed the server's new mark (its workload's
		// HBONE tunnel) to node-a's ztunnel, the client's captured calls
		// may still go out plaintext; then they are mTLS.
		mtls := m.waitMTLS(t, client, serverURL, nodeB, start)
		t.Logf("mTLS from kagent/client to kagent/server seen by node-b's ztunnel %v after the label", mtls.Round(time.Millisecond))
		// Found from /proc, not from the annotation the agents ignore.
		m.requireAgentLog(t, nodeA, `msg="pod captured by reconcile"`, " pod=client ", " namespace=kagent ", " netns=/proc/")
	})

	t.Run("ConflistRestored", func(t *testing.T) {
		path := filepath.Join(m.nodes.NetD(nodeA), testnode.ConflistName)
		stripped := withoutPlugin(t, path)
		start := time.Now()
		if err := os.WriteFile(path, stripped, 0o644); err != nil {
			t.Fatal(err)
		}
		for !hasPlugin(path) {
			if time.Since(start) > time.Second {
				t.Fatalf("%s still without %s a second after the rewrite", path, install.PluginType)
			}
			time.Sleep(time.Millisecond)
		}
		t.Logf("node-a's cni-agent put %s back %v after the conflist was rewritten without it", install.PluginType, time.Since(start).Round(time.Microsecond))
	})

	t.Run("PodStartedWithoutPluginCaptured", func(t *testing.T) {
		// A pod whose ADD ran the chain without ambit-cni (the conflist
		// rewritten by the primary CNI at that moment) starts uncaptured;
		// the agent captures it from /proc as soon as it runs.
		m.createPod(ctx, "kagent", "racer", nodeA, nil, func(p *corev1.Pod) {
			p.Annotations = map[string]string{testnode.WithoutAmbitCNIAnnotation: "true"}
		})
		wctx, cancel := context.WithTimeout(ctx, convergeWithin)
		defer cancel()
		racer, err := m.nodes.WaitRunning(wctx, "kagent", "racer")
		if err != nil {
			t.Fatal(err)
		}
		rules, marked := m.waitAllCaptured(t, []*corev1.Pod{racer}, time.Now(), enrollCaptureWithin)
		t.Logf("pod started without ambit-cni: capture rules in place %v after it was seen running, marked %v after", rules.Round(time.Millisecond), marked.Round(time.Millisecond))
		if rules > time.Second {
			t.Errorf("capture rules in place %v after the pod ran, want within a second", rules)
		}
		m.requireAgentLog(t, nodeA, `msg="pod captured by reconcile"`, " pod=racer ", " netns=/proc/")
		m.mustGet(t, racer, serverURL, convergeWithin)
		m.requireMTLS(t, nodeB, "kagent", "racer")
		m.requireNoPlaintext(t, nodeB, "kagent", "racer")
	})

	t.Run("NodeRestartFailsClosed", func(t *testing.T) {
		cniLog := m.nodes.LogPath("cni-" + nodeA)
		logStart := fileSize(cniLog)
		for _, name := range []string{"cni-agent", "ztunnel"} {
			m.kill(nodeA, name)
		}
		m.createPod(ctx, "kagent", "late", nodeA, nil)
		// While the agent is down ADD fails: the pod gets no IP and does
		// not run.
		deadline := time.Now().Add(failClosedFor)
		for time.Now().Before(deadline) {
			p, err := m.c.Client.CoreV1().Pods("kagent").Get(ctx, "late", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if p.Status.PodIP != "" || p.Status.Phase == corev1.PodRunning {
				t.Fatalf("pod kagent/late started (phase %s, IP %q) while node-a's agent was down", p.Status.Phase, p.Status.PodIP)
			}
			time.Sleep(50 * time.Millisecond)
		}
		failures := strings.Count(tail(cniLog, logStart), "unreachable")
		if failures == 0 {
			t.Fatalf("no ADD failed with the agent unreachable in %s:\n%s", cniLog, tail(cniLog, logStart))
		}
		t.Logf("kagent/late Pending for %v with the agent down: %d ADD failures (agent unreachable)", failClosedFor, failures)

		start := time.Now()
		m.relaunch(m.procs[nodeA]["cni-agent"])
		m.relaunch(m.procs[nodeA]["ztunnel"])
		wctx, cancel := context.WithTimeout(ctx, restartWithin)
		defer cancel()
		m.waitNodeReady(wctx, nodeA)
		late, err := m.nodes.WaitRunning(wctx, "kagent", "late")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("kagent/late running %v after node-a's agent and ztunnel restarted", time.Since(start).Round(time.Millisecond))
		m.waitCaptured(t, late, true)
		m.waitCaptured(t, client, true) // captured before the restart: still
		m.mustGet(t, late, serverURL, convergeWithin)
		m.requireMTLS(t, nodeB, "kagent", "late")
		m.requireNoPlaintext(t, nodeB, "kagent", "late")
		m.mustGet(t, client, serverURL, convergeWithin)
		// ADD ran before the pod's process existed (containerd's order):
		// accepted unverified, then verified by the sandbox's cgroup.
		m.requireAgentLog(t, nodeA, `msg="netns accepted on CNI ADD before any process runs in it; verified again when the sandbox starts"`, " pod=late ")
		m.requireAgentLog(t, nodeA, `msg="pod's netns verified: its sandbox process runs in it"`, " pod=late ")
	})

	t.Run("Uninstall", func(t *testing.T) {
		bin := filepath.Join(m.dir, "cni-bin", install.PluginType)
		conflistA := filepath.Join(m.nodes.NetD(nodeA), testnode.ConflistName)
		// While the agents' DaemonSet exists, an agent's exit is an upgrade
		// or a node restart: nothing is undone.
		m.createAgentDaemonSet(t)
		m.stopGracefully(t, nodeA, "cni-agent")
		if !hasPlugin(conflistA) {
			t.Fatalf("%s lost %s when the agent exited with its DaemonSet in place", conflistA, install.PluginType)
		}
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("plugin binary after the agent exited with its DaemonSet in place: %v", err)
		}
		m.waitCaptured(t, client, true)
		m.requireAgentLog(t, nodeA, "still in place (an upgrade or a node restart)")
		m.relaunch(m.procs[nodeA]["cni-agent"])
		m.waitNodeReady(ctx, nodeA)

		// helm uninstall: the DaemonSet goes, then its pods.
		m.deleteAgentDaemonSet(t)
		pods := m.runningPods(t, "kagent")
		for _, node := range []string{nodeA, nodeB} {
			m.stopGracefully(t, node, "cni-agent")
			m.requireAgentLog(t, node, "the agent's DaemonSet is gone: uninstalling")
		}
		for _, p := range pods {
			m.waitCaptured(t, p, false)
		}
		for _, node := range []string{nodeA, nodeB} {
			if path := filepath.Join(m.nodes.NetD(node), testnode.ConflistName); hasPlugin(path) {
				t.Errorf("%s still names %s after the uninstall", path, install.PluginType)
			}
		}
		if _, err := os.Stat(bin); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after the uninstall: %v, want it removed", bin, err)
		}
		// Plain networking goes on.
		m.mustGet(t, client, serverURL, convergeWithin)
		// A pod deleted now is gone, not stuck: its CNI DEL runs the chain
		// without ambit-cni.
		start := time.Now()
		if err := m.c.Client.CoreV1().Pods("kagent").Delete(ctx, "client", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		for {
			_, err := m.c.Client.CoreV1().Pods("kagent").Get(ctx, "client", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				break
			}
			if time.Since(start) > convergeWithin {
				t.Fatalf("pod kagent/client still there %v after its deletion (err %v)", convergeWithin, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("pod deleted after the uninstall gone in %v", time.Since(start).Round(time.Millisecond))
	})
}

// waitAllCaptured polls until every pod's netns holds the capture table
// and its object the mark, failing after within; it returns the times
// since start when all tables were in place and when all marks were too.
func (m *mesh) waitAllCaptured(t *testing.T, pods []*corev1.Pod, start time.Time, within time.Duration) (rules, marked time.Duration) {
	t.Helper()
	for {
		var noRules, unmarked []string
		for _, p := range pods {
			key := p.Namespace + "/" + p.Name
			if !nftTable(p.Annotations[agent.NetnsAnnotation]) {
				noRules = append(noRules, key)
			}
			cur, err := m.c.Client.CoreV1().Pods(p.Namespace).Get(context.Background(), p.Name, metav1.GetOptions{})
			if err != nil || cur.Annotations[agent.RedirectionAnnotation] != agent.RedirectionEnabled {
				unmarked = append(unmarked, key)
			}
		}
		if len(noRules) == 0 && rules == 0 {
			rules = time.Since(start)
		}
		if len(noRules) == 0 && len(unmarked) == 0 {
			return rules, time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%v after the change: pods without capture rules %v, without the mark %v", within, noRules, unmarked)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitMTLS makes GETs from the pod to url until node's ztunnel has
// counted an inbound mTLS connection from the pod's identity, failing
// after convergeWithin; it returns the time since start.
func (m *mesh) waitMTLS(t *testing.T, from *corev1.Pod, url, node string, start time.Time) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), convergeWithin)
	defer cancel()
	want := map[string]string{"reporter": "destination", "connection_security_policy": "mutual_tls",
		"source_principal": mustID(t, from.Namespace, from.Name).String()}
	err := cluster.Eventually(ctx, fmt.Sprintf("mTLS from %s/%s seen by %s's ztunnel", from.Namespace, from.Name, node), func(ctx context.Context) error {
		if _, err := get(ctx, from.Annotations[agent.NetnsAnnotation], url, 2*time.Second); err != nil {
			return err
		}
		text, err := m.nodeGet(ctx, node, "http://127.0.0.1:15020/stats/prometheus")
		if err != nil {
			return err
		}
		if !hasMetric(text, "istio_tcp_connections_opened_total", want) {
			return fmt.Errorf("no inbound connection %v counted yet", want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// requireMTLS asserts node's ztunnel counted an inbound mTLS (HBONE)
// connection from the identity of namespace/sa.
func (m *mesh) requireMTLS(t *testing.T, node, namespace, sa string) {
	t.Helper()
	text, err := m.nodeGet(context.Background(), node, "http://127.0.0.1:15020/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"reporter": "destination", "source_principal": mustID(t, namespace, sa).String(),
		"connection_security_policy": "mutual_tls"}
	if !hasMetric(text, "istio_tcp_connections_opened_total", want) {
		t.Fatalf("%s's ztunnel counted no inbound mTLS connection %v:\n%s", node, want, text)
	}
}

// createAgentDaemonSet creates the cni-agents' DaemonSet object (the agents
// run as test-node processes; its pods stay unscheduled, as the cluster
// has no scheduler); Cleanup deletes it.
func (m *mesh) createAgentDaemonSet(t *testing.T) {
	t.Helper()
	labels := map[string]string{"app": agentDaemonSet}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: systemNS, Name: agentDaemonSet},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					HostNetwork: true, ServiceAccountName: agentSA,
					NodeSelector: map[string]string{"kubernetes.io/os": "linux"},
					Containers:   []corev1.Container{{Name: "cni-agent", Image: "ambit/cni-agent"}},
				},
			},
		},
	}
	if _, err := m.c.Client.AppsV1().DaemonSets(systemNS).Create(context.Background(), ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = m.c.Client.AppsV1().DaemonSets(systemNS).Delete(context.Background(), agentDaemonSet, metav1.DeleteOptions{})
	})
}

// deleteAgentDaemonSet deletes the DaemonSet and waits until it is gone.
func (m *mesh) deleteAgentDaemonSet(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), convergeWithin)
	defer cancel()
	dss := m.c.Client.AppsV1().DaemonSets(systemNS)
	if err := dss.Delete(ctx, agentDaemonSet, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err := cluster.Eventually(ctx, "DaemonSet "+agentDaemonSet+" gone", func(ctx context.Context) error {
		_, err := dss.Get(ctx, agentDaemonSet, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// requireAgentLog waits up to convergeWithin for a line of node's
// cni-agent log holding every part.
func (m *mesh) requireAgentLog(t *testing.T, node string, parts ...string) {
	t.Helper()
	path := m.nodes.LogPath("cni-agent-" + node)
	deadline := time.Now().Add(convergeWithin)
	for {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(data)) {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line of %s holds %q after %v", path, parts, convergeWithin)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// requireNoPlaintext asserts node's ztunnel counted no inbound plaintext
// connection from the workload namespace/name.
func (m *mesh) requireNoPlaintext(t *testing.T, node, namespace, name string) {
	t.Helper()
	text, err := m.nodeGet(context.Background(), node, "http://127.0.0.1:15020/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"reporter": "destination", "connection_security_policy": "none",
		"source_workload": name, "source_workload_namespace": namespace}
	if hasMetric(text, "istio_tcp_connections_opened_total", want) {
		t.Fatalf("%s's ztunnel counted a plaintext connection from %s/%s: it left uncaptured", node, namespace, name)
	}
}

// runningPods lists the pods of a namespace.
func (m *mesh) runningPods(t *testing.T, namespace string) []*corev1.Pod {
	t.Helper()
	list, err := m.c.Client.CoreV1().Pods(namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []*corev1.Pod
	for i := range list.Items {
		out = append(out, &list.Items[i])
	}
	return out
}

// kill SIGKILLs a node process, as a node crash would.
func (m *mesh) kill(node, name string) {
	m.t.Helper()
	np := m.procs[node][name]
	if err := syscall.Kill(np.proc.PID, syscall.SIGKILL); err != nil {
		m.t.Fatalf("killing %s on %s: %v", name, node, err)
	}
	m.nodes.StopProc(np.proc, 5*time.Second) // reaps it
}

// stopGracefully SIGTERMs a node process and waits for it to exit.
func (m *mesh) stopGracefully(t *testing.T, node, name string) {
	t.Helper()
	np := m.procs[node][name]
	start := time.Now()
	m.nodes.StopProc(np.proc, 20*time.Second)
	if np.proc.Alive() {
		t.Fatalf("%s on %s still running after SIGTERM", name, node)
	}
	t.Logf("%s on %s exited %v after SIGTERM", name, node, time.Since(start).Round(time.Millisecond))
}

// withoutPlugin returns the conflist at path without ambit-cni's entry, as
// a primary CNI rewriting its config would write it.
func withoutPlugin(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	plugins, _ := doc["plugins"].([]any)
	var kept []any
	for _, p := range plugins {
		if e, ok := p.(map[string]any); ok && e["type"] == install.PluginType {
			continue
		}
		kept = append(kept, p)
	}
	if len(kept) == len(plugins) {
		t.Fatalf("%s does not name %s", path, install.PluginType)
	}
	doc["plugins"] = kept
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func hasPlugin(path string) bool {
	data, err := os.ReadFile(path)
	return err == nil && strings.Contains(string(data), `"`+install.PluginType+`"`)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// tail is the file from offset on.
func tail(path string, offset int64) string {
	data, err := os.ReadFile(path)
	if err != nil || int64(len(data)) < offset {
		return ""
	}
	return string(data[offset:])
}
