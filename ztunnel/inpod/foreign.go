package inpod

import (
	"log/slog"
	"os"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/proxy"
)

// DefaultForeignListenerInterval is how often a pod's namespace is scanned
// for foreign listeners when Config.ForeignListenerInterval is zero.
const DefaultForeignListenerInterval = 3 * time.Second

// ownListener is one of ztunnel's listeners in a pod.
type ownListener struct {
	port  int
	inode uint32
}

// foreignWatch scans one pod's namespace for TCP listeners on ztunnel's
// in-pod ports that are not ztunnel's, until stopped.
type foreignWatch struct {
	cfg   *Config
	log   *slog.Logger
	pod   proxy.Pod
	ns    *os.File
	own   map[uint32]bool
	ports []int

	stop chan struct{}
	done chan struct{}

	diag   *sockDiag
	counts map[int]int     // foreign listeners per port at the last scan
	seen   map[uint32]bool // foreign inodes already logged
	failed bool            // the last scan failed (logged once per streak)
}

// startForeignWatch starts watching and returns the function that stops
// the watch and waits for it to end. ns must stay open until then.
func (m *Manager) startForeignWatch(pod proxy.Pod, ns *os.File, own []ownListener) func() {
	if m.cfg.ForeignListenerInterval < 0 {
		return func() {}
	}
	w := &foreignWatch{
		cfg: &m.cfg, log: m.log.With("pod", pod.Name, "namespace", pod.Namespace, "uid", pod.UID),
		pod: pod, ns: ns, own: map[uint32]bool{},
		stop: make(chan struct{}), done: make(chan struct{}),
		counts: map[int]int{}, seen: map[uint32]bool{},
	}
	for _, o := range own {
		w.own[o.inode] = true
		w.ports = append(w.ports, o.port)
	}
	go w.run()
	return func() {
		close(w.stop)
		<-w.done
	}
}

func (w *foreignWatch) run() {
	defer close(w.done)
	defer func() {
		if w.diag != nil {
			w.diag.Close()
		}
		// The pod is gone from this ztunnel: its series end.
		for _, port := range w.ports {
			if w.counts[port] > 0 && w.cfg.OnForeignListener != nil {
				w.cfg.OnForeignListener(w.pod, port, 0)
			}
		}
	}()
	interval := w.cfg.ForeignListenerInterval
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		w.scan(min(interval, 2*time.Second))
		select {
		case <-w.stop:
			return
		case <-tick.C:
		}
	}
}

// scan lists the namespace's listeners once and reports changes.
func (w *foreignWatch) scan(timeout time.Duration) {
	var err error
	if w.diag == nil {
		w.diag, err = openSockDiag(w.ns)
	}
	var ls []tcpListener
	if err == nil {
		ls, err = w.diag.listeners(timeout)
	}
	if err != nil {
		if w.diag != nil {
			w.diag.Close()
			w.diag = nil
		}
		if !w.failed {
			w.log.Warn("cannot check the pod's network namespace for foreign listeners; retrying", "error", err)
		}
		w.failed = true
		return
	}
	w.failed = false

	watched := map[int]bool{}
	for _, p := range w.ports {
		watched[p] = true
	}
	counts := map[int]int{}
	seen := map[uint32]bool{}
	for _, l := range ls {
		port := int(l.Addr.Port())
		if !watched[port] || w.own[l.Inode] {
			continue
		}
		if l.HasMark && l.Mark == w.cfg.Mark {
			// Another ztunnel's listener (taking over or handing over):
			// only processes with CAP_NET_ADMIN can set the mark.
			continue
		}
		counts[port]++
		seen[l.Inode] = true
		if !w.seen[l.Inode] {
			w.log.Error("foreign listener on a ztunnel port in the pod: another process may receive the pod's mesh traffic; find its process by the socket inode (ss -ltpe in the pod's network namespace) and stop it",
				"port", port, "address", l.Addr.String(), "inode", l.Inode, "socket_uid", l.UID)
		}
	}
	for inode := range w.seen {
		if !seen[inode] {
			w.log.Info("foreign listener gone", "inode", inode)
		}
	}
	w.seen = seen
	for _, port := range w.ports {
		if counts[port] != w.counts[port] && w.cfg.OnForeignListener != nil {
			w.cfg.OnForeignListener(w.pod, port, counts[port])
		}
	}
	w.counts = counts
}
