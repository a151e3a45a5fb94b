package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/ctl/local/topology"
	"github.com/ambit-mesh/ambit/pkg/enrollment"
	"github.com/ambit-mesh/ambit/pkg/localcluster"
	"github.com/ambit-mesh/ambit/pkg/netns"
)

// errCNI marks a failed CNI ADD: the pod is cleaned up and reported, the
// rest of the mesh stays.
var errCNI = errors.New("CNI ADD failed")

// cniConfig returns the node's libcni config; plugin stderr goes to
// logs/cni-<node>.log. Call close when done.
func (s *session) cniConfig(node string) (cfg *libcni.CNIConfig, logPath string, close func()) {
	logPath = s.e.Paths.Log("cni-" + node)
	var stderr io.Writer = io.Discard
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err == nil {
		stderr = f
	}
	ex := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: stderr}, PluginDecoder: version.PluginDecoder{}}
	cfg = libcni.NewCNIConfigWithCacheDir([]string{s.e.Paths.CNIBin()}, s.e.Paths.join("nodes", node, "cni-cache"), ex)
	return cfg, logPath, func() {
		if f != nil {
			f.Close()
		}
	}
}

// addPod runs a pod's lifecycle as a container runtime would: record it,
// create its netns, run the CNI chain in the node's netns, ask the node's
// agent whether it is captured (the redirection mark), record its IPs and
// the mark in the cluster state and istiod's config, wait for every
// ztunnel to hold it (through istiod and xDS), then start its command.
func (s *session) addPod(ctx context.Context, pod topology.Pod) error {
	p := s.e.Paths
	cs, err := s.loadState()
	if err != nil {
		return err
	}
	nsName := PodNetns(pod.Namespace, pod.Name)
	cp := localcluster.Pod{
		UID: newUID(), Name: pod.Name, Namespace: pod.Namespace, Node: pod.Node,
		ServiceAccount: pod.ServiceAccount, Labels: pod.Labels, Netns: netns.Path(nsName),
	}
	cs.Pods = append(cs.Pods, cp)
	if err := s.writeState(cs); err != nil {
		return err
	}
	podNS, err := netns.Create(nsName)
	if err != nil {
		return s.forgetPod(cs, cp, err)
	}
	err = netns.Do(podNS, func() error { return linkUp("lo") })
	podNS.Close()
	if err != nil {
		return s.forgetPod(cs, cp, err)
	}
	nodeNS, err := netns.OpenName(NodeNetns(pod.Node))
	if err != nil {
		return s.forgetPod(cs, cp, err)
	}
	defer nodeNS.Close()
	lctx, cancel := context.WithTimeout(ctx, s.e.readyTimeout())
	list, err := loadChain(lctx, p.NetD(pod.Node))
	cancel()
	if err != nil {
		return s.forgetPod(cs, cp, err)
	}
	cfg, cniLog, closeLog := s.cniConfig(pod.Node)
	defer closeLog()
	ref := CNIPod{Namespace: pod.Namespace, Name: pod.Name, UID: cp.UID, Netns: cp.Netns}
	actx, cancel := context.WithTimeout(ctx, s.e.readyTimeout())
	ips, err := CNIAdd(actx, nodeNS, cfg, list, ref)
	cancel()
	if err != nil {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_ = CNIDel(dctx, nodeNS, cfg, list, ref)
		cancel()
		return s.forgetPod(cs, cp, fmt.Errorf("%w: %v (plugin log: %s, agent log: %s)", errCNI, err, cniLog, p.Log("cni-agent-"+pod.Node)))
	}
	for i := range cs.Pods {
		if cs.Pods[i].UID == cp.UID {
			cs.Pods[i].IPs = ips
		}
	}
	// The pod reaches istiod only now, with its capture state: it is
	// never advertised before the agent answered.
	enrolled, captured := podCapture(ctx, p, cp)
	if captured {
		s.redirected[cp.UID] = true
	}
	if err := s.writeState(cs); err != nil {
		return err
	}
	if err := s.syncZtunnels(ctx); err != nil {
		return err
	}
	line := fmt.Sprintf("pod %s %s", pod.Key(), joinIPs(ips))
	switch {
	case enrolled && captured:
		line += " enrolled, captured"
	case enrolled:
		line += " enrolled, NOT captured"
	default:
		line += " not enrolled"
	}
	s.e.progress("%s", line)
	if len(pod.Run) == 0 {
		return nil
	}
	bin, err := s.e.FindBinary(pod.Run[0])
	if err != nil {
		return err
	}
	args := make([]string, 0, len(pod.Run)-1)
	for _, a := range pod.Run[1:] {
		args = append(args, strings.ReplaceAll(a, "{{name}}", pod.Name))
	}
	name := "pod-" + pod.Namespace + "-" + pod.Name
	env := []string{"POD_NAME=" + pod.Name, "POD_NAMESPACE=" + pod.Namespace}
	if err := s.start(Proc{Name: name, Kind: KindPod, Node: pod.Node, Pod: pod.Key()}, nsName, bin, args, env); err != nil {
		return err
	}
	pr, _ := s.proc(name)
	if !pr.Alive() {
		return fmt.Errorf("the command of pod %s exited at once; read %s", pod.Key(), pr.Log)
	}
	return nil
}

// forgetPod undoes a pod that did not get its network: removes its netns
// and its cluster state entry. It returns cause.
func (s *session) forgetPod(cs *localcluster.State, cp localcluster.Pod, cause error) error {
	_ = netns.Delete(PodNetns(cp.Namespace, cp.Name))
	out := cs.Pods[:0]
	for _, p := range cs.Pods {
		if p.UID != cp.UID {
			out = append(out, p)
		}
	}
	cs.Pods = out
	if err := s.writeState(cs); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

// delPod stops the pod's processes, runs CNI DEL (best effort), removes
// its netns and its cluster state entry, and regenerates the ztunnel
// config.
func (s *session) delPod(ctx context.Context, key string) error {
	var mine []Proc
	for _, pr := range s.procs.Procs {
		if pr.Kind == KindPod && pr.Pod == key {
			mine = append(mine, pr)
		}
	}
	StopProcs(mine, s.e.stopGrace())
	s.procs.remove(func(pr Proc) bool { return pr.Kind == KindPod && pr.Pod == key })
	if err := s.procs.save(s.e.Paths.Procs()); err != nil {
		return err
	}
	cs, err := s.loadState()
	if err != nil {
		return err
	}
	ns, name, _ := strings.Cut(key, "/")
	cp, ok := cs.Pod(ns, name)
	if ok {
		s.cniDelBestEffort(ctx, cp)
	}
	if err := netns.Delete(PodNetns(ns, name)); err != nil {
		return err
	}
	if !ok {
		return nil
	}
	out := cs.Pods[:0]
	for _, p := range cs.Pods {
		if p.UID != cp.UID {
			out = append(out, p)
		}
	}
	cs.Pods = out
	if err := s.writeState(cs); err != nil {
		return err
	}
	if err := s.syncZtunnels(ctx); err != nil {
		return err
	}
	s.e.progress("pod %s deleted", key)
	return nil
}

func (s *session) cniDelBestEffort(ctx context.Context, cp localcluster.Pod) {
	nodeNS, err := netns.OpenName(NodeNetns(cp.Node))
	if err != nil {
		return
	}
	defer nodeNS.Close()
	list, err := libcni.LoadNetworkConf(s.e.Paths.NetD(cp.Node), NetworkName)
	if err != nil {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cfg, _, closeLog := s.cniConfig(cp.Node)
	defer closeLog()
	if err := CNIDel(dctx, nodeNS, cfg, list, CNIPod{Namespace: cp.Namespace, Name: cp.Name, UID: cp.UID, Netns: cp.Netns}); err != nil {
		s.e.progress("pod %s: CNI DEL: %v (continuing)", cp.Key(), err)
	}
}

func joinIPs(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, ",")
}

// podCapture asks the node's cni-agent, after a successful CNI ADD,
// whether the pod is enrolled and its capture in place. When the agent does
// not answer, the CNI ADD's success decides: the agent answers Enroll only
// once an enrolled pod is captured (agentapi's contract), so an enrolled
// pod is then reported captured rather than advertised as plaintext.
func podCapture(ctx context.Context, p Paths, cp localcluster.Pod) (enrolled, captured bool) {
	r, err := checkPod(ctx, p, cp)
	if err != nil {
		e := enrollment.Decide(cp.Labels, nsLabels(p, cp.Namespace)).Enrolled
		return e, e
	}
	return r.Enrolled, r.Enrolled && r.CaptureInPlace
}

// nsLabels returns the labels of a namespace in the cluster state.
func nsLabels(p Paths, name string) map[string]string {
	cs, err := localcluster.Load(p.Cluster())
	if err != nil {
		return nil
	}
	ns, _ := cs.Namespace(name)
	return ns.Labels
}

// checkPod asks the node's cni-agent about a pod (agentapi Check).
func checkPod(ctx context.Context, p Paths, cp localcluster.Pod) (agentapi.CheckResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c := agentapi.NewClient(p.AgentSocket(cp.Node))
	defer c.CloseIdleConnections()
	return c.Check(ctx, agentapi.CheckRequest{PodRef: agentapi.PodRef{
		Namespace: cp.Namespace, Name: cp.Name, UID: cp.UID, ContainerID: cp.UID, Netns: cp.Netns, IfName: PodIfName,
	}})
}

// Down stops every process, runs CNI DEL for the pods (best effort),
// deletes every ambitl- network namespace and removes the state dir. It is
// safe to run twice and after a crash: without procs.json it finds the
// processes by their network namespaces.
func (e *Engine) Down(ctx context.Context) error {
	if err := RequirePrivileges(); err != nil {
		return err
	}
	return e.down(ctx, false)
}

func (e *Engine) down(ctx context.Context, quiet bool) error {
	unlock, err := e.lock()
	if err != nil {
		return err
	}
	defer unlock()
	say := func(format string, args ...any) {
		if !quiet {
			e.progress(format, args...)
		}
	}
	names, err := netns.List(NetnsPrefix)
	if err != nil {
		return err
	}
	procs, perr := loadProcs(e.Paths.Procs())
	if perr != nil {
		procs = &procTable{}
	}
	_, statErr := os.Stat(e.Paths.Dir)
	if len(names) == 0 && len(procs.Procs) == 0 && os.IsNotExist(statErr) {
		say("no local mesh found; nothing to do")
		if !quiet {
			_ = os.Remove(e.Paths.Lock())
		}
		return nil
	}
	if quiet {
		e.progress("clearing leftovers of a previous local mesh")
	}
	s := &session{e: e, procs: procs}
	// Pods first, then CNI DEL while the agents still run, then the rest.
	var pods, others []Proc
	for _, p := range procs.Procs {
		if p.Kind == KindPod {
			pods = append(pods, p)
		} else {
			others = append(others, p)
		}
	}
	StopProcs(pods, e.stopGrace())
	if cs, err := localcluster.Load(e.Paths.Cluster()); err == nil {
		for _, cp := range cs.Pods {
			if _, err := os.Stat(cp.Netns); err == nil {
				s.cniDelBestEffort(ctx, cp)
			}
		}
	}
	StopProcs(others, e.stopGrace())
	ids := map[netns.ID]bool{}
	for _, n := range names {
		if id, err := netns.IDOfPath(netns.Path(n)); err == nil {
			ids[id] = true
		}
	}
	if left := ProcsInNetns(ids); len(left) > 0 {
		say("stopping %d processes left in %s* namespaces", len(left), NetnsPrefix)
		StopProcs(left, e.stopGrace())
	}
	var errs []error
	for _, n := range names {
		if err := netns.Delete(n); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeStateDir(e.Paths.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if !quiet {
		// Still held: lock() in other commands notices the removal.
		if err := os.Remove(e.Paths.Lock()); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	say("local mesh removed: %d processes stopped, %d network namespaces deleted, %s removed", len(procs.Procs), len(names), e.Paths.Dir)
	return nil
}

// stateEntries are the names a state dir may hold; removeStateDir refuses
// to remove a directory holding anything else (a mistyped --state-dir).
var stateEntries = map[string]bool{
	"topology.yaml": true, "cluster.json": true, "config": true, "redirection.json": true, "istiod": true,
	"root-cert.pem": true, "tokens.yaml": true, "nodes": true, "cni": true, "logs": true, "procs.json": true,
}

func removeStateDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !stateEntries[e.Name()] && !strings.HasPrefix(e.Name(), ".") {
			return fmt.Errorf("not removing %s: it holds %s, which local mode did not create; is --state-dir right?", dir, e.Name())
		}
	}
	return os.RemoveAll(dir)
}
