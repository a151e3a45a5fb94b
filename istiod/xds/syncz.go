package xds

import (
	"cmp"
	"slices"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/ambit-mesh/ambit/pkg/syncz"
)

// MetadataIstioVersion is the node metadata key holding a proxy's version
// (Istio's ISTIO_VERSION, which its proxy-status shows).
const MetadataIstioVersion = "ISTIO_VERSION"

// syncState is one stream's sync status. The stream's goroutine writes it
// under mu (and may read it without); Syncz reads it under mu.
type syncState struct {
	mu          sync.Mutex
	connectedAt time.Time
	node        *core.Node // nil until the first request names one
	types       [numTypes]typeSync
}

type typeSync struct {
	subscribed bool
	sent       string // nonce of the last response sent
	acked      string // nonce of the last response ACKed
	nackMsg    string // message of the last NACK, until a later ACK
}

func (s *syncState) setNode(n *core.Node) {
	s.mu.Lock()
	s.node = n
	s.mu.Unlock()
}

func (s *syncState) subscribe(idx int) {
	s.mu.Lock()
	s.types[idx].subscribed = true
	s.mu.Unlock()
}

func (s *syncState) sent(idx int, nonce string) {
	s.mu.Lock()
	s.types[idx].sent = nonce
	s.mu.Unlock()
}

func (s *syncState) ack(idx int, nonce string) {
	s.mu.Lock()
	s.types[idx].acked = nonce
	s.types[idx].nackMsg = ""
	s.mu.Unlock()
}

func (s *syncState) nack(idx int, msg string) {
	s.mu.Lock()
	s.types[idx].nackMsg = msg
	s.mu.Unlock()
}

// proxy returns the syncz entry, or false before the stream has a node.
func (s *syncState) proxy() (syncz.Proxy, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.node == nil {
		return syncz.Proxy{}, false
	}
	p := syncz.Proxy{ID: s.node.GetId(), ConnectedAt: s.connectedAt, Types: []syncz.Type{}}
	md := s.node.GetMetadata().GetFields()
	if id, err := ParseNodeID(p.ID); err == nil {
		p.Kind, p.Pod, p.Namespace = id.Type, id.Pod, id.Namespace
	}
	p.Node = md[MetadataNodeName].GetStringValue()
	p.Pod = cmp.Or(p.Pod, md["NAME"].GetStringValue())
	p.Namespace = cmp.Or(p.Namespace, md["NAMESPACE"].GetStringValue())
	p.Version = cmp.Or(md[MetadataIstioVersion].GetStringValue(), s.node.GetUserAgentVersion())
	for idx, t := range s.types {
		if !t.subscribed {
			continue
		}
		st := syncz.Stale
		switch {
		case t.sent == "":
			st = syncz.NotSent
		case t.sent == t.acked:
			st = syncz.Synced
		}
		p.Types = append(p.Types, syncz.Type{TypeURL: typeURLs[idx], Sent: t.sent, Acked: t.acked, Status: st, Error: t.nackMsg})
	}
	return p, true
}

// Syncz returns every open stream whose node is known (its first request
// was authorized), sorted by node ID then connection time, with the sync
// status of each type it subscribed to: SYNCED when the last response sent
// was ACKed, STALE when it was not (yet) or was NACKed, NOT SENT before
// the first response. Error is the last NACK message until a later
// response is ACKed. Safe for concurrent use with serving.
func (s *Server) Syncz() []syncz.Proxy {
	s.streamsMu.Lock()
	streams := make([]*stream, 0, len(s.streams))
	for st := range s.streams {
		streams = append(streams, st)
	}
	s.streamsMu.Unlock()
	out := make([]syncz.Proxy, 0, len(streams))
	for _, st := range streams {
		if p, ok := st.sync.proxy(); ok {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b syncz.Proxy) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), a.ConnectedAt.Compare(b.ConnectedAt))
	})
	return out
}
