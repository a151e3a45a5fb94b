package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
)

// Reconcile makes one pod (by UID) match the source: a running (has IPs)
// enrolled pod is captured and handed to ztunnel, from the netns the
// source records or, without a record, the one Config.NetnsFinder finds;
// a captured pod no longer enrolled or gone from the source is released;
// a netns accepted on CNI ADD before its sandbox ran is verified again;
// the pod's captured mark is set to match. Level-triggered and idempotent;
// it does nothing until the source has synced. An error means "retry".
func (a *Agent) Reconcile(ctx context.Context, uid string) error {
	_, err := a.reconcile(ctx, uid)
	return err
}

// ReconcileAll is Reconcile of every pod the source lists or the agent
// tracks; the pods' errors are joined.
func (a *Agent) ReconcileAll(ctx context.Context) error {
	var errs []error
	for _, uid := range a.keys() {
		if err := a.Reconcile(ctx, uid); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// keys are the UIDs of the source's pods and of the tracked ones, sorted.
func (a *Agent) keys() []string {
	pods, _ := a.cfg.Source.Pods()
	seen := map[string]bool{}
	for _, p := range pods {
		seen[p.UID] = true
	}
	for _, uid := range a.Captured() {
		seen[uid] = true
	}
	out := make([]string, 0, len(seen))
	for uid := range seen {
		out = append(out, uid)
	}
	sort.Strings(out)
	return out
}

// reconcile is Reconcile; recheck reports a pod to look at again after
// VerifyInterval although nothing failed (an unverified netns).
func (a *Agent) reconcile(ctx context.Context, uid string) (recheck bool, err error) {
	unlock, err := a.locks.lock(ctx, uid)
	if err != nil {
		return false, err
	}
	defer unlock()
	p, inSource, synced := a.sourcePod(uid)
	if !synced {
		return false, nil
	}
	enrolled := inSource && a.decide(p).Enrolled
	t, tracked := a.lookup(uid)
	switch {
	case tracked && !enrolled:
		if err := a.releaseLocked(ctx, uid, t.pod.Key(), ""); err != nil {
			return false, err
		}
	case tracked && t.unverified:
		if recheck, err = a.reverify(ctx, t); err != nil {
			return false, err
		}
	case !tracked && enrolled && len(p.IPs) > 0:
		if err := a.captureRunning(ctx, p); err != nil {
			return false, err
		}
	}
	if inSource {
		return recheck, a.mark(ctx, p)
	}
	return recheck, nil
}

// captureRunning captures a running enrolled pod the agent does not
// track. The caller holds the pod's lock.
func (a *Agent) captureRunning(ctx context.Context, p Pod) error {
	path := p.Netns
	if path == "" && a.cfg.NetnsFinder != nil {
		var err error
		if path, err = a.cfg.NetnsFinder.FindNetns(ctx, p); err != nil {
			return fmt.Errorf("capturing running pod %s (uid %s) on node %s: %w", p.Key(), p.UID, a.cfg.Node, err)
		}
	}
	if path == "" {
		a.log.Debug("enrolled pod has no known netns; waiting for its CNI ADD", "pod", p.Name, "namespace", p.Namespace)
		return nil
	}
	if err := a.captureAndAdd(ctx, p, path, true); err != nil {
		return err
	}
	a.log.Info("pod captured by reconcile", "pod", p.Name, "namespace", p.Namespace, "uid", p.UID, "netns", path)
	return nil
}

// reverify checks again a netns accepted on CNI ADD before any process
// ran in it: a process of the pod verifies it; a process of another pod
// releases the pod (its rules are removed and ztunnel drops it); no
// process of any pod yet keeps it unverified (recheck). A process of no
// pod (only a privileged one can enter a netns) neither verifies nor
// releases: a process being started for the sandbox may enter the netns
// before its pod's cgroup. The caller holds the pod's lock.
func (a *Agent) reverify(ctx context.Context, t tracked) (recheck bool, err error) {
	log := a.log.With("pod", t.pod.Name, "namespace", t.pod.Namespace, "uid", t.pod.UID, "netns", t.netns)
	verr := a.cfg.Verifier.VerifyNetns(ctx, t.pod, t.netns, t.id)
	switch {
	case verr == nil:
		a.mu.Lock()
		if cur, ok := a.pods[t.pod.UID]; ok && cur.ns == t.ns {
			cur.unverified = false
			a.pods[t.pod.UID] = cur
		}
		a.mu.Unlock()
		log.Info("pod's netns verified: its sandbox process runs in it")
		return false, nil
	case errors.Is(verr, ErrNetnsNoPodProcess):
		return true, nil
	}
	log.Error("releasing pod: the netns its CNI ADD named is used by another pod's process", "error", verr)
	if err := a.releaseLocked(ctx, t.pod.UID, t.pod.Key(), ""); err != nil {
		return false, errors.Join(verr, err)
	}
	return false, nil
}

// mark makes the pod's captured mark match whether the agent tracks it
// (no-op without an Annotator).
func (a *Agent) mark(ctx context.Context, p Pod) error {
	if a.cfg.Annotator == nil {
		return nil
	}
	_, captured := a.lookup(p.UID)
	if captured == p.Redirected {
		return nil
	}
	if err := a.cfg.Annotator.Annotate(ctx, p, captured); err != nil {
		return err
	}
	a.log.Debug("pod mark updated", "pod", p.Name, "namespace", p.Namespace, "captured", captured)
	return nil
}
