package agent

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/client-go/util/workqueue"
)

// Overall retry budget of Run, over all pods: a token bucket as
// client-go's default controller rate limiter has, so that many failing
// pods cannot make the agent spin.
const (
	retryQPS   = 10
	retryBurst = 100
)

// Run reconciles the node's pods until ctx ends, one pod at a time per
// worker (Config.Workers) from a work queue keyed by pod UID: every pod
// the source lists or the agent tracks is queued at once, on every source
// change and every ResyncInterval. A pod whose Reconcile fails is retried
// after a per-pod exponential backoff (RetryMin doubling up to RetryMax,
// within an overall token bucket), so one pod's failure neither waits for
// the next resync nor delays the other pods. A netns accepted on CNI ADD
// before its sandbox ran is checked again every VerifyInterval.
func (a *Agent) Run(ctx context.Context) {
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedMaxOfRateLimiter(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](a.cfg.RetryMin, a.cfg.RetryMax),
			&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(rate.Limit(retryQPS), retryBurst)},
		),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "cni-agent-pods"})
	requeue := func(uid string) { q.AddAfter(uid, a.cfg.VerifyInterval) }
	a.requeue.Store(&requeue)
	defer a.requeue.Store(nil)
	var wg sync.WaitGroup
	for range a.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for a.processNextWorkItem(ctx, q) {
			}
		}()
	}
	defer wg.Wait()
	defer q.ShutDown()

	tick := time.NewTicker(a.cfg.ResyncInterval)
	defer tick.Stop()
	for {
		changed := a.cfg.Source.Changed()
		for _, uid := range a.keys() {
			q.Add(uid)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
		}
	}
}

// processNextWorkItem reconciles the next pod of q; false once q shut
// down.
func (a *Agent) processNextWorkItem(ctx context.Context, q workqueue.TypedRateLimitingInterface[string]) bool {
	uid, quit := q.Get()
	if quit {
		return false
	}
	defer q.Done(uid)
	recheck, err := a.reconcile(ctx, uid)
	if ctx.Err() != nil {
		return true
	}
	if err != nil {
		ns, name := a.podName(uid)
		a.log.Error("reconciling pod failed; retrying with backoff", "pod", name, "namespace", ns, "uid", uid,
			"retries", q.NumRequeues(uid), "error", err)
		q.AddRateLimited(uid)
		return true
	}
	if n := q.NumRequeues(uid); n > 0 {
		ns, name := a.podName(uid)
		a.log.Info("pod reconciled after retries", "pod", name, "namespace", ns, "uid", uid, "retries", n)
	}
	q.Forget(uid)
	if recheck {
		q.AddAfter(uid, a.cfg.VerifyInterval)
	}
	return true
}

// podName is the namespace and name of the pod with uid, from the source
// or the tracked pods; empty when neither knows it.
func (a *Agent) podName(uid string) (namespace, name string) {
	if p, ok, _ := a.sourcePod(uid); ok {
		return p.Namespace, p.Name
	}
	if t, ok := a.lookup(uid); ok {
		return t.pod.Namespace, t.pod.Name
	}
	return "", ""
}
