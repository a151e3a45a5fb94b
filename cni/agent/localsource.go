package agent

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/localcluster"
)

// LocalSource is the PodSource of local mode: local mode's cluster state
// file (package localcluster), filtered to one node's pods. Call Run to
// watch the file.
type LocalSource struct {
	path     string
	node     string
	interval time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	pods    []Pod
	synced  bool
	changed chan struct{}
}

var _ PodSource = (*LocalSource)(nil)

// NewLocalSource returns a source for the pods of node in the state file at
// path, polled every interval (0: localcluster's default). log may be nil.
func NewLocalSource(path, node string, interval time.Duration, log *slog.Logger) *LocalSource {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &LocalSource{path: path, node: node, interval: interval, log: log, changed: make(chan struct{})}
}

// Run watches the state file until ctx ends. A missing or invalid file is
// logged and the last good state stays.
func (s *LocalSource) Run(ctx context.Context) {
	localcluster.Watch(ctx, s.path, s.interval, s.Set, func(err error) {
		s.log.Warn("reading the local cluster state; keeping the last good one", "node", s.node, "path", s.path, "err", err)
	})
}

// Set replaces the source's pods with st's pods of this node and signals a
// change. Run calls it; tests may call it directly.
func (s *LocalSource) Set(st *localcluster.State) {
	var pods []Pod
	for _, p := range st.Pods {
		if p.Node != s.node {
			continue
		}
		ns, _ := st.Namespace(p.Namespace)
		pods = append(pods, Pod{
			UID:             p.UID,
			Name:            p.Name,
			Namespace:       p.Namespace,
			ServiceAccount:  p.ServiceAccount,
			Labels:          maps.Clone(p.Labels),
			NamespaceLabels: maps.Clone(ns.Labels),
			Netns:           p.Netns,
			IPs:             slices.Clone(p.IPs),
		})
	}
	s.mu.Lock()
	s.pods, s.synced = pods, true
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	s.log.Debug("local cluster state read", "node", s.node, "generation", st.Generation, "pods", len(pods))
}

// Pods implements PodSource.
func (s *LocalSource) Pods() ([]Pod, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.pods), s.synced
}

// Changed implements PodSource.
func (s *LocalSource) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}
