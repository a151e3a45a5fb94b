package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sync"

	"github.com/ambit-mesh/ambit/ctl/local/topology"
	"github.com/ambit-mesh/ambit/pkg/localcluster"
)

// openSession loads the running mesh's topology and process table.
func (e *Engine) openSession() (*session, error) {
	b, err := os.ReadFile(e.Paths.Topology())
	if os.IsNotExist(err) {
		return nil, fmt.Errorf("%w in %s: run `ambitctl local up -f FILE` first", ErrNotRunning, e.Paths.Dir)
	}
	if err != nil {
		return nil, err
	}
	t, err := topology.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", e.Paths.Topology(), err)
	}
	procs, err := loadProcs(e.Paths.Procs())
	if err != nil {
		return nil, err
	}
	red, err := loadRedirection(e.Paths)
	if err != nil {
		return nil, err
	}
	return &session{e: e, topo: t, procs: procs, reaped: map[int]<-chan struct{}{}, redirected: red}, nil
}

// Merge returns cur with the fragment's objects added or replaced (by
// namespace/name; policies by kind/namespace/name). Nodes in the fragment
// must already exist: nodes cannot change while the mesh runs.
func Merge(cur, frag *topology.Topology) (*topology.Topology, error) {
	if frag.TrustDomain != "" && frag.TrustDomain != cur.TrustDomain {
		return nil, fmt.Errorf("%w: trustDomain %q differs from the running mesh's %q; it cannot change while running", topology.ErrInvalid, frag.TrustDomain, cur.TrustDomain)
	}
	for _, n := range frag.Nodes {
		if cur.NodeIndex(n.Name) < 0 {
			return nil, fmt.Errorf("%w: node %q is not in the running mesh; nodes cannot be added while running (down, edit, up)", topology.ErrInvalid, n.Name)
		}
	}
	m := clone(cur)
	for _, ns := range frag.Namespaces {
		replaced := false
		for i := range m.Namespaces {
			if m.Namespaces[i].Name == ns.Name {
				m.Namespaces[i], replaced = ns, true
			}
		}
		if !replaced {
			m.Namespaces = append(m.Namespaces, ns)
		}
	}
	for _, p := range frag.Pods {
		replaced := false
		for i := range m.Pods {
			if m.Pods[i].Key() == p.Key() {
				m.Pods[i], replaced = p, true
			}
		}
		if !replaced {
			m.Pods = append(m.Pods, p)
		}
	}
	for _, s := range frag.Services {
		replaced := false
		for i := range m.Services {
			if m.Services[i].Namespace == s.Namespace && m.Services[i].Name == s.Name {
				m.Services[i], replaced = s, true
			}
		}
		if !replaced {
			m.Services = append(m.Services, s)
		}
	}
	for _, pol := range frag.Policies {
		replaced := false
		for i := range m.Policies {
			if PolicyKey(m.Policies[i]) == PolicyKey(pol) {
				m.Policies[i], replaced = pol, true
			}
		}
		if !replaced {
			m.Policies = append(m.Policies, pol)
		}
	}
	return m, nil
}

// Remove returns cur without the fragment's objects. Removing a namespace
// removes its pods, services and policies too. Nodes cannot be removed.
func Remove(cur, frag *topology.Topology) (*topology.Topology, error) {
	if len(frag.Nodes) > 0 {
		return nil, fmt.Errorf("%w: nodes cannot be deleted while running (down, edit, up)", topology.ErrInvalid)
	}
	gone := map[string]bool{}
	for _, ns := range frag.Namespaces {
		gone["ns/"+ns.Name] = true
	}
	for _, p := range frag.Pods {
		gone["pod/"+p.Key()] = true
	}
	for _, s := range frag.Services {
		gone["svc/"+s.Namespace+"/"+s.Name] = true
	}
	for _, pol := range frag.Policies {
		gone["pol/"+PolicyKey(pol)] = true
	}
	m := clone(cur)
	m.Namespaces = m.Namespaces[:0]
	for _, ns := range cur.Namespaces {
		if !gone["ns/"+ns.Name] {
			m.Namespaces = append(m.Namespaces, ns)
		}
	}
	m.Pods = m.Pods[:0]
	for _, p := range cur.Pods {
		if !gone["pod/"+p.Key()] && !gone["ns/"+p.Namespace] {
			m.Pods = append(m.Pods, p)
		}
	}
	m.Services = m.Services[:0]
	for _, s := range cur.Services {
		if !gone["svc/"+s.Namespace+"/"+s.Name] && !gone["ns/"+s.Namespace] {
			m.Services = append(m.Services, s)
		}
	}
	m.Policies = m.Policies[:0]
	for _, pol := range cur.Policies {
		p, err := decodePolicyMeta(pol)
		if !gone["pol/"+PolicyKey(pol)] && (err != nil || !gone["ns/"+p.Metadata.Namespace]) {
			m.Policies = append(m.Policies, pol)
		}
	}
	return m, nil
}

func clone(t *topology.Topology) *topology.Topology {
	c := *t
	c.Nodes = append([]topology.Node(nil), t.Nodes...)
	c.Namespaces = append([]topology.Namespace(nil), t.Namespaces...)
	c.Pods = append([]topology.Pod(nil), t.Pods...)
	c.Services = append([]topology.Service(nil), t.Services...)
	c.Policies = append([]map[string]any(nil), t.Policies...)
	return &c
}

// Apply adds or changes the fragment's namespaces, pods, services and
// policies in the running mesh. The merged topology is validated (policies
// included) before anything changes.
func (e *Engine) Apply(ctx context.Context, fragFile string) error {
	return e.change(ctx, fragFile, "applied", Merge)
}

// Delete removes the fragment's objects from the running mesh.
func (e *Engine) Delete(ctx context.Context, fragFile string) error {
	return e.change(ctx, fragFile, "deleted", Remove)
}

func (e *Engine) change(ctx context.Context, fragFile, verb string, op func(cur, frag *topology.Topology) (*topology.Topology, error)) error {
	if err := RequirePrivileges(); err != nil {
		return err
	}
	b, err := os.ReadFile(fragFile)
	if err != nil {
		return err
	}
	frag, err := topology.ParseFragment(b)
	if err != nil {
		return fmt.Errorf("%s: %w", fragFile, err)
	}
	unlock, err := e.lock()
	if err != nil {
		return err
	}
	defer unlock()
	s, err := e.openSession()
	if err != nil {
		return err
	}
	next, err := op(s.topo, frag)
	if err != nil {
		return err
	}
	if err := next.Validate(); err != nil {
		return fmt.Errorf("%s: the result would be invalid, nothing applied:\n%w", fragFile, err)
	}
	if err := checkNames(next); err != nil {
		return err
	}
	cs, err := s.loadState()
	if err != nil {
		return err
	}
	if err := CheckConfig(next, cs); err != nil {
		return fmt.Errorf("%s: nothing applied:\n%w", fragFile, err)
	}
	for _, p := range next.Pods {
		if len(p.Run) > 0 {
			if _, err := e.FindBinary(p.Run[0]); err != nil {
				return fmt.Errorf("pod %s: %w; nothing applied", p.Key(), err)
			}
		}
	}

	prev := map[string]topology.Pod{}
	for _, p := range s.topo.Pods {
		prev[p.Key()] = p
	}
	want := map[string]topology.Pod{}
	for _, p := range next.Pods {
		want[p.Key()] = p
	}
	var remove, add []string
	for k, p := range prev {
		w, ok := want[k]
		switch {
		case !ok:
			remove = append(remove, k)
		case w.Node != p.Node || w.ServiceAccount != p.ServiceAccount || !reflect.DeepEqual(w.Run, p.Run):
			remove = append(remove, k)
			add = append(add, k)
		default:
			// A pod without a cluster state entry did not get its network
			// (its CNI ADD failed): applying it again retries.
			if _, ok := cs.Pod(p.Namespace, p.Name); !ok {
				add = append(add, k)
			}
		}
	}
	for _, p := range next.Pods {
		if _, ok := prev[p.Key()]; !ok {
			add = append(add, p.Key())
		}
	}

	// Pods to remove go first, under the old topology.
	for _, k := range remove {
		if err := s.delPod(ctx, k); err != nil {
			return err
		}
	}
	// Then labels, services and policies: write the new topology and state.
	prevTopo := s.topo
	s.topo = next
	if err := s.writeTopology(); err != nil {
		return err
	}
	if cs, err = s.loadState(); err != nil {
		return err
	}
	if err := s.relabel(ctx, prevTopo, cs); err != nil {
		return err
	}
	var errs []error
	for _, k := range add {
		if err := s.addPod(ctx, want[k]); err != nil {
			if !errors.Is(err, errCNI) {
				return fmt.Errorf("pod %s: %w", k, err)
			}
			e.progress("pod %s: %v", k, err)
			errs = append(errs, fmt.Errorf("pod %s: %w", k, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	e.progress("%s %s: %d pods added, %d removed; %d pods, %d services, %d policies now", verb, fragFile, len(add), len(remove), len(next.Pods), len(next.Services), len(next.Policies))
	return nil
}

// relabel applies the new topology's labels, services and policies to the
// running pods of cs, keeping the redirection marks fail closed: a pod
// whose enrollment changes is advertised as HBONE from before its capture
// is set up until after it is taken down, never as plaintext while
// captured. In order: pods becoming enrolled are marked; istiod's config
// is written and every ztunnel synced; the cluster state (which the
// agents reconcile capture from) is written; the agents are asked until
// the enrolled pods are captured and the others released; the released
// pods' marks are dropped and the ztunnels synced again. A pod that does
// not converge is an error and keeps its mark (traffic to it fails rather
// than leaving in plaintext).
func (s *session) relabel(ctx context.Context, prev *topology.Topology, cs *localcluster.State) error {
	var enrolling, leaving []localcluster.Pod
	for _, cp := range cs.Pods {
		if len(cp.IPs) == 0 {
			continue
		}
		var was, now bool
		for _, p := range prev.Pods {
			if p.Key() == cp.Key() {
				was = prev.Enrolled(p)
			}
		}
		for _, p := range s.topo.Pods {
			if p.Key() == cp.Key() {
				now = s.topo.Enrolled(p)
			}
		}
		switch {
		case now && !was:
			enrolling = append(enrolling, cp)
			s.redirected[cp.UID] = true
		case was && !now:
			leaving = append(leaving, cp)
		}
	}
	if err := s.writeConfig(cs); err != nil {
		return err
	}
	if err := s.syncZtunnels(ctx); err != nil {
		return err
	}
	syncLabels(cs, s.topo)
	if err := s.writeCluster(cs); err != nil {
		return err
	}
	if len(enrolling)+len(leaving) == 0 {
		return nil
	}
	var wg sync.WaitGroup
	errs := make([]error, len(enrolling)+len(leaving))
	for i, cp := range append(enrolling, leaving...) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.waitCapture(ctx, cp, i < len(enrolling))
		}()
	}
	wg.Wait()
	for i, cp := range leaving {
		if errs[len(enrolling)+i] == nil {
			delete(s.redirected, cp.UID)
		}
	}
	if len(leaving) > 0 {
		if err := s.writeConfig(cs); err != nil {
			return err
		}
		if err := s.syncZtunnels(ctx); err != nil {
			return err
		}
	}
	for _, cp := range enrolling {
		s.e.progress("pod %s enrolled, captured", cp.Key())
	}
	for i, cp := range leaving {
		if errs[len(enrolling)+i] == nil {
			s.e.progress("pod %s not enrolled, released", cp.Key())
		}
	}
	return errors.Join(errs...)
}

// waitCapture waits until the node's agent reports the pod captured and
// its ztunnel serves it (captured true), or the pod not enrolled and gone
// from its ztunnel (the agent removes the rules before it tells ztunnel).
func (s *session) waitCapture(ctx context.Context, cp localcluster.Pod, captured bool) error {
	err := s.wait(ctx, "cni-agent-"+cp.Node, func(ctx context.Context) error {
		r, err := checkPod(ctx, s.e.Paths, cp)
		if err != nil {
			return err
		}
		if captured && !(r.Enrolled && r.CaptureInPlace) {
			return fmt.Errorf("not captured yet (%s)", r.Reason)
		}
		if !captured && r.Enrolled {
			return errors.New("still enrolled")
		}
		has, err := ztunnelHasPod(ctx, cp.Node, cp.UID)
		if err != nil {
			return err
		}
		if has != captured {
			return fmt.Errorf("ztunnel-%s serves it: %v", cp.Node, has)
		}
		return nil
	})
	if err != nil {
		if captured {
			return fmt.Errorf("pod %s: enrolled, but its capture did not come up (istiod keeps advertising it as HBONE: connections to it fail rather than go in plaintext): %w", cp.Key(), err)
		}
		return fmt.Errorf("pod %s: no longer enrolled, but its capture was not taken down (istiod keeps advertising it as HBONE): %w", cp.Key(), err)
	}
	return nil
}

// syncLabels copies namespaces and pod labels from the topology into the
// cluster state, where the agents reconcile capture from them.
func syncLabels(cs *localcluster.State, t *topology.Topology) {
	cs.Namespaces = cs.Namespaces[:0]
	for _, ns := range t.Namespaces {
		cs.Namespaces = append(cs.Namespaces, localcluster.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	for i := range cs.Pods {
		for _, p := range t.Pods {
			if p.Key() == cs.Pods[i].Key() {
				cs.Pods[i].Labels = p.Labels
			}
		}
	}
}
