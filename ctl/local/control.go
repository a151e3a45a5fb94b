package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrNoProcess is returned by Stop and Start for a name procs.json does not
// hold.
var ErrNoProcess = errors.New("no such process in the local mesh")

// Stop stops one process of the running mesh by its name in `ambitctl local
// status` (istiod, cni-agent-<node>, ztunnel-<node>, pod-<ns>-<pod>):
// SIGTERM to its process group, SIGKILL after StopGrace. It is recorded as
// stopped in procs.json, so status says why it is down; the pods and their
// network namespaces are left as they are. Stopping a process that is not
// running only records it as stopped.
func (e *Engine) Stop(ctx context.Context, name string) error {
	procs, i, unlock, err := e.lockProc(name)
	if err != nil {
		return err
	}
	defer unlock()
	p := procs.Procs[i]
	if p.Alive() {
		StopProcs([]Proc{p}, e.stopGrace())
		if p.Alive() {
			return fmt.Errorf("%s (pid %d) still runs after SIGKILL", name, p.PID)
		}
		e.progress("stopped %s (pid %d)", name, p.PID)
	} else {
		e.progress("%s was not running", name)
	}
	procs.Procs[i].Stopped = true
	return procs.save(e.Paths.Procs())
}

// lockProc checks privileges, takes the mesh lock and finds the process
// named name in procs.json. On success the caller must call unlock.
func (e *Engine) lockProc(name string) (procs *procTable, i int, unlock func(), err error) {
	if err := RequirePrivileges(); err != nil {
		return nil, 0, nil, err
	}
	if unlock, err = e.lock(); err != nil {
		return nil, 0, nil, err
	}
	if procs, err = e.loadRunningProcs(); err == nil {
		i, err = procs.find(name)
	}
	if err != nil {
		unlock()
		return nil, 0, nil, err
	}
	return procs, i, unlock, nil
}

// Start starts again a process of the running mesh that is not running
// (stopped with Stop, or exited): the recorded command, environment and
// network namespace, output appended to its log. It returns once the
// process is ready (for a pod: alive; for istiod: every ztunnel re-synced
// with it), within ReadyTimeout; the readiness answer must come from the
// process started (Engine.answeredBy). Starting a running process does
// nothing. It refuses (ErrUnrecorded) while a process of the same program
// runs unrecorded in the same network namespace, and kills the process it
// started when it cannot record it (a full state dir).
func (e *Engine) Start(ctx context.Context, name string) error {
	procs, i, unlock, err := e.lockProc(name)
	if err != nil {
		return err
	}
	defer unlock()
	old := procs.Procs[i]
	if old.Alive() {
		e.progress("%s already runs (pid %d)", name, old.PID)
		return nil
	}
	if len(old.Command) == 0 {
		return fmt.Errorf("%s: procs.json records no command to start", name)
	}
	orphans, err := unrecorded(old, procs.Procs)
	if err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	if len(orphans) > 0 {
		o := orphans[0]
		return fmt.Errorf("starting %s: %w: pid %d (%s) runs in network namespace %s but procs.json does not record it (left by a start that could not record it?); stop it with `kill %d` and start %s again",
			name, ErrUnrecorded, o.PID, strings.Join(o.Command, " "), old.Netns, o.PID, name)
	}
	p, reaped, err := Launch(old.Netns, old.Command[0], old.Command[1:], old.Env, old.Log)
	if err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	p.Name, p.Kind, p.Node, p.Pod = old.Name, old.Kind, old.Node, old.Pod
	procs.Procs[i] = p
	if err := recordStarted(procs, e.Paths.Procs(), p, reaped); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	s := &session{e: e, procs: procs, reaped: map[int]<-chan struct{}{p.PID: reaped}}
	if err := s.wait(ctx, name, e.readyCheck(p)); err != nil {
		return err
	}
	if p.Kind == KindIstiod {
		// Ready means istiod pushed its first config; wait until every
		// ztunnel re-synced over its new xDS stream.
		sess, err := e.openSession()
		if err != nil {
			return err
		}
		sess.reaped = s.reaped
		if err := sess.syncZtunnels(ctx); err != nil {
			return fmt.Errorf("istiod started, but the ztunnels did not re-sync: %w", err)
		}
	}
	e.progress("started %s (pid %d), ready", name, p.PID)
	return nil
}

// loadRunningProcs loads procs.json of a running mesh.
func (e *Engine) loadRunningProcs() (*procTable, error) {
	if _, err := os.Stat(e.Paths.Procs()); os.IsNotExist(err) {
		return nil, fmt.Errorf("%w in %s: run `ambitctl local up -f FILE` first", ErrNotRunning, e.Paths.Dir)
	}
	return loadProcs(e.Paths.Procs())
}

// readyCheck is the readiness probe of a process of kind p.Kind.
func (e *Engine) readyCheck(p Proc) func(context.Context) error {
	switch p.Kind {
	case KindIstiod:
		return func(ctx context.Context) error { return istiodReady(ctx, e.Paths) }
	case KindAgent:
		return func(ctx context.Context) error { return agentReady(ctx, e.Paths, p.Node) }
	case KindZtunnel:
		return func(ctx context.Context) error { return ztunnelReady(ctx, p.Node) }
	default:
		return func(context.Context) error {
			if !p.Alive() {
				return fmt.Errorf("%s exited", p.Name)
			}
			return nil
		}
	}
}
