package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/google/nftables"

	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/ctl/local/topology"
	"github.com/ambit-mesh/ambit/pkg/localcluster"
	"github.com/ambit-mesh/ambit/pkg/netns"
)

// NoKubeProxyNote is shown with the services.
const NoKubeProxyNote = "service VIPs (10.96.0.0/16) are reachable only through the mesh: there is no kube-proxy, so only enrolled pods can use them"

// Status is `ambitctl local status -o json`.
type Status struct {
	StateDir    string          `json:"stateDir"`
	TrustDomain string          `json:"trustDomain"`
	Nodes       []NodeStatus    `json:"nodes"`
	Pods        []PodStatus     `json:"pods"`
	Services    []ServiceStatus `json:"services"`
	Processes   []ProcStatus    `json:"processes"`
	Notes       []string        `json:"notes"`
}

// NodeStatus is one node.
type NodeStatus struct {
	Name    string `json:"name"`
	Netns   string `json:"netns"`
	IP      string `json:"ip"`
	PodCIDR string `json:"podCIDR"`
}

// PodStatus is one pod. Captured is the cni-agent's view (its Check API),
// or, when the agent does not answer, whether the nftables table inet
// ambit exists in the pod's netns (CaptureSource says which).
type PodStatus struct {
	Namespace     string   `json:"namespace"`
	Name          string   `json:"name"`
	Node          string   `json:"node"`
	UID           string   `json:"uid,omitempty"`
	IPs           []string `json:"ips"`
	IP            string   `json:"ip"`
	Identity      string   `json:"identity"`
	Enrolled      bool     `json:"enrolled"`
	Captured      bool     `json:"captured"`
	CaptureSource string   `json:"captureSource,omitempty"`
	Netns         string   `json:"netns"`
	Running       bool     `json:"running"`
}

// ServiceStatus is one service.
type ServiceStatus struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Hostname  string   `json:"hostname"`
	VIP       string   `json:"vip"`
	Ports     []string `json:"ports"`
	Endpoints []string `json:"endpoints"`
}

// ProcStatus is one process of procs.json.
type ProcStatus struct {
	Name  string `json:"name"`
	Kind  string `json:"kind"`
	PID   int    `json:"pid"`
	Alive bool   `json:"alive"`
	Ready bool   `json:"ready"`
	// Stopped: down on purpose (`ambitctl local stop`).
	Stopped bool   `json:"stopped,omitempty"`
	Detail  string `json:"detail,omitempty"`
	Log     string `json:"log"`
}

// Status reads the running mesh and asks each process whether it is ready.
func (e *Engine) Status(ctx context.Context) (*Status, error) {
	if err := RequirePrivileges(); err != nil {
		return nil, err
	}
	s, err := e.openSession()
	if err != nil {
		return nil, err
	}
	cs, err := localcluster.Load(e.Paths.Cluster())
	if err != nil {
		return nil, err
	}
	t := s.topo
	st := &Status{StateDir: e.Paths.Dir, TrustDomain: t.TrustDomain, Notes: []string{NoKubeProxyNote},
		Nodes: []NodeStatus{}, Pods: []PodStatus{}, Services: []ServiceStatus{}, Processes: []ProcStatus{}}
	for i, n := range t.Nodes {
		st.Nodes = append(st.Nodes, NodeStatus{Name: n.Name, Netns: NodeNetns(n.Name), IP: NodeIP(i).String(), PodCIDR: PodCIDR(i).String()})
	}
	running := map[string]bool{}
	for _, pr := range s.procs.Procs {
		if pr.Kind == KindPod && pr.Alive() {
			running[pr.Pod] = true
		}
	}
	st.Pods = make([]PodStatus, len(t.Pods))
	var wg sync.WaitGroup
	for i, pod := range t.Pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st.Pods[i] = podStatus(ctx, e.Paths, t, cs, pod, running[pod.Key()] || len(pod.Run) == 0)
		}()
	}
	st.Processes = make([]ProcStatus, len(s.procs.Procs))
	for i, pr := range s.procs.Procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st.Processes[i] = procStatus(ctx, e.Paths, pr)
		}()
	}
	wg.Wait()
	for _, svc := range t.Services {
		ss := ServiceStatus{Namespace: svc.Namespace, Name: svc.Name, Hostname: svc.Hostname(), VIP: svc.VIP, Endpoints: []string{}}
		for _, p := range svc.Ports {
			ss.Ports = append(ss.Ports, fmt.Sprintf("%d->%d/%s", p.Port, p.TargetPort, p.Protocol))
		}
		for _, pod := range t.Pods {
			if cp, ok := cs.Pod(pod.Namespace, pod.Name); ok && svc.Selects(pod) && len(cp.IPs) > 0 {
				ss.Endpoints = append(ss.Endpoints, pod.Key()+"@"+cp.IPs[0].String())
			}
		}
		st.Services = append(st.Services, ss)
	}
	sort.Slice(st.Pods, func(i, j int) bool {
		return st.Pods[i].Namespace+"/"+st.Pods[i].Name < st.Pods[j].Namespace+"/"+st.Pods[j].Name
	})
	return st, nil
}

func podStatus(ctx context.Context, p Paths, t *topology.Topology, cs *localcluster.State, pod topology.Pod, running bool) PodStatus {
	ps := PodStatus{Namespace: pod.Namespace, Name: pod.Name, Node: pod.Node, IPs: []string{},
		Identity: t.Identity(pod).String(), Enrolled: t.Enrolled(pod), Netns: PodNetns(pod.Namespace, pod.Name), Running: running}
	cp, ok := cs.Pod(pod.Namespace, pod.Name)
	if !ok || len(cp.IPs) == 0 {
		ps.Running = false // no network: its CNI ADD failed
		return ps
	}
	ps.UID = cp.UID
	for _, ip := range cp.IPs {
		ps.IPs = append(ps.IPs, ip.String())
	}
	if len(ps.IPs) > 0 {
		ps.IP = ps.IPs[0]
	}
	if !ps.Enrolled {
		return ps
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c := agentapi.NewClient(p.AgentSocket(cp.Node))
	defer c.CloseIdleConnections()
	r, err := c.Check(cctx, agentapi.CheckRequest{PodRef: agentapi.PodRef{
		Namespace: cp.Namespace, Name: cp.Name, UID: cp.UID, ContainerID: cp.UID, Netns: cp.Netns, IfName: PodIfName,
	}})
	if err == nil {
		ps.Captured, ps.CaptureSource = r.Enrolled && r.CaptureInPlace, "cni-agent"
		return ps
	}
	ps.Captured, ps.CaptureSource = nftTableExists(cp.Netns), "nftables (cni-agent unreachable: "+err.Error()+")"
	return ps
}

// nftTableExists reports whether the table inet ambit exists in the netns.
func nftTableExists(nsPath string) bool {
	ns, err := netns.Open(nsPath)
	if err != nil {
		return false
	}
	defer ns.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		return false
	}
	defer conn.CloseLasting()
	_, err = conn.ListTableOfFamily("ambit", nftables.TableFamilyINet)
	return err == nil
}

func procStatus(ctx context.Context, p Paths, pr Proc) ProcStatus {
	ps := ProcStatus{Name: pr.Name, Kind: pr.Kind, PID: pr.PID, Alive: pr.Alive(), Log: pr.Log}
	if !ps.Alive {
		ps.Stopped = pr.Stopped
		if pr.Stopped {
			ps.Detail = "stopped; `ambitctl local start " + pr.Name + "` starts it again"
		} else {
			ps.Detail = "exited; read " + pr.Log + "; `ambitctl local start " + pr.Name + "` starts it again"
		}
		return ps
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var err error
	switch pr.Kind {
	case KindIstiod:
		err = istiodReady(cctx, p)
	case KindZtunnel:
		err = ztunnelReady(cctx, pr.Node)
	case KindAgent:
		c := agentapi.NewClient(p.AgentSocket(pr.Node))
		err = c.Status(cctx)
		c.CloseIdleConnections()
	}
	ps.Ready = err == nil
	if err != nil {
		ps.Detail = err.Error()
	}
	return ps
}

// WriteText prints the status as tables.
func (st *Status) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "state dir %s, trust domain %s\n\n", st.StateDir, st.TrustDomain)
	fmt.Fprintln(tw, "NODE\tNETNS\tIP\tPOD CIDR")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Name, n.Netns, n.IP, n.PodCIDR)
	}
	fmt.Fprintln(tw, "\nPOD\tNODE\tIP\tIDENTITY\tENROLLED\tCAPTURED\tRUNNING")
	for _, p := range st.Pods {
		ip := p.IP
		if ip == "" {
			ip = "-"
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%v\t%v\t%v\n", p.Namespace, p.Name, p.Node, ip, p.Identity, p.Enrolled, p.Captured, p.Running)
	}
	fmt.Fprintln(tw, "\nSERVICE\tVIP\tPORTS\tENDPOINTS")
	for _, s := range st.Services {
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\n", s.Namespace, s.Name, s.VIP, strings.Join(s.Ports, ","), strings.Join(s.Endpoints, ","))
	}
	fmt.Fprintln(tw, "\nPROCESS\tPID\tALIVE\tREADY\tDETAIL")
	for _, p := range st.Processes {
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t%s\n", p.Name, p.PID, p.Alive, p.Ready, p.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range st.Notes {
		fmt.Fprintf(w, "\nnote: %s\n", n)
	}
	return nil
}

// Healthy reports whether every process is alive and ready.
func (st *Status) Healthy() error {
	var errs []error
	for _, p := range st.Processes {
		if !p.Alive || (p.Kind != KindPod && !p.Ready) {
			errs = append(errs, fmt.Errorf("%s: %s", p.Name, p.Detail))
		}
	}
	return errors.Join(errs...)
}

// Exec runs argv in the pod's network namespace with stdio attached and
// returns its exit code. argv[0] is resolved like a pod's run command.
func (e *Engine) Exec(ctx context.Context, pod string, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if err := RequirePrivileges(); err != nil {
		return 0, err
	}
	ns, name, ok := strings.Cut(pod, "/")
	if !ok || ns == "" || name == "" {
		return 0, fmt.Errorf("pod %q: want NAMESPACE/POD", pod)
	}
	if len(argv) == 0 {
		return 0, errors.New("no command given: ambitctl local exec NAMESPACE/POD -- CMD [ARGS...]")
	}
	cs, err := localcluster.Load(e.Paths.Cluster())
	if err != nil {
		if os.IsNotExist(errors.Unwrap(err)) || errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("%w in %s: run `ambitctl local up -f FILE` first", ErrNotRunning, e.Paths.Dir)
		}
		return 0, err
	}
	cp, ok := cs.Pod(ns, name)
	if !ok {
		return 0, fmt.Errorf("pod %s is not in the local mesh (see `ambitctl local status`)", pod)
	}
	bin, err := e.FindBinary(argv[0])
	if err != nil {
		return 0, err
	}
	return execIn(ctx, cp, bin, argv[1:], stdin, stdout, stderr)
}
