package xds

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// wildcardName subscribes to every resource of a type.
const wildcardName = "*"

// stream is one client's delta ADS stream. Its state is owned by the
// goroutine running run; other goroutines only call wakeUp.
type stream struct {
	srv *Server
	gs  discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	id  uint64
	log *slog.Logger

	// wake holds at most one pending "the snapshot changed" signal: a
	// stream that is busy sending (a slow client) coalesces any number of
	// publishes into one diff against the latest snapshot.
	wake chan struct{}

	node    string
	watches [numTypes]*watch
	nonce   uint64
	// sync is what /debug/syncz reports; the stream's goroutine writes it
	// under its lock and may read it without.
	sync syncState
}

// watch is the subscription of one stream to one type, and what the client
// holds of it.
type watch struct {
	wildcard bool
	// have is the type snapshot whose entries the client holds, when
	// wildcard and at least one response was sent; nil before.
	have *typeSnapshot
	// initial is the client's initial_resource_versions, used by the
	// first response only.
	initial map[string]string
	// names are explicit subscriptions with the version the client holds
	// ("" for none, or told it does not exist, see absent).
	names map[string]string
	// force are names subscribed since the last response: they are sent
	// (or reported absent) even if the client already has them.
	force map[string]struct{}
	// respond: a response is owed even if empty (first request).
	respond bool
	// lastFull is 1 + the generation of the last shared full response
	// sent (0: none), so a nonce is never reused on the stream.
	lastFull uint64
}

// absent marks an explicit name the client was told does not exist.
const absent = "\x00absent"

func newStream(s *Server, gs discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, id uint64) *stream {
	st := &stream{srv: s, gs: gs, id: id, log: s.log.With("stream", id), wake: make(chan struct{}, 1)}
	st.sync.connectedAt = time.Now()
	return st
}

func (st *stream) wakeUp() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

func (st *stream) logger() *slog.Logger { return st.log }

// run serves the stream until the client ends it or ctx ends.
func (st *stream) run(ctx context.Context) error {
	reqs := make(chan *discovery.DeltaDiscoveryRequest, 16)
	errc := make(chan error, 1)
	go func() {
		for {
			req, err := st.gs.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	nodeChecked := st.srv.opts.AuthorizeNode == nil
	for {
		select {
		case req := <-reqs:
			if !nodeChecked {
				if err := st.srv.opts.AuthorizeNode(ctx, req.GetNode()); err != nil {
					st.log.Warn("xDS stream refused", "node", req.GetNode().GetId(), "error", err)
					return st.srv.unauthorized(err)
				}
				nodeChecked = true
			}
			st.handle(req)
		case <-st.wake:
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ctx.Done():
			return nil
		}
		if err := st.push(); err != nil {
			return err
		}
	}
}

// handle applies one request to the stream's subscriptions.
func (st *stream) handle(req *discovery.DeltaDiscoveryRequest) {
	if st.node == "" && req.GetNode() != nil {
		st.setNode(req.GetNode())
	}
	idx, ok := typeIndex(req.GetTypeUrl())
	if !ok {
		st.log.Warn("xDS request for a type istiod does not serve on this stream; ignored",
			"type", req.GetTypeUrl(), "served", typeURLs[:])
		return
	}
	if n := req.GetResponseNonce(); n != "" {
		if d := req.GetErrorDetail(); d != nil {
			st.srv.stats.nacks.Add(1)
			st.sync.nack(idx, d.GetMessage())
			st.log.Warn("xDS client rejected a response (NACK); it is not resent, the next change of those resources is",
				"type", typeURLs[idx], "nonce", n, "latest", n == st.sync.types[idx].sent, "code", d.GetCode(), "message", d.GetMessage())
		} else {
			st.srv.stats.acks.Add(1)
			st.sync.ack(idx, n)
		}
	}
	w := st.watches[idx]
	first := w == nil
	if first {
		w = &watch{names: map[string]string{}, force: map[string]struct{}{}, respond: true}
		st.watches[idx] = w
		st.sync.subscribe(idx)
		if len(req.GetResourceNamesSubscribe()) == 0 {
			w.wildcard = true // legacy wildcard: first request with no names
		}
		if len(req.GetInitialResourceVersions()) > 0 {
			w.initial = req.GetInitialResourceVersions()
		}
		st.log.Debug("xDS subscription", "type", typeURLs[idx], "names", req.GetResourceNamesSubscribe(), "initial_versions", len(w.initial))
	}
	for _, n := range req.GetResourceNamesSubscribe() {
		if n == wildcardName {
			w.wildcard = true
			continue
		}
		if _, ok := w.names[n]; !ok {
			w.names[n] = w.initial[n]
		}
		if !first {
			w.force[n] = struct{}{}
		}
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		if n == wildcardName {
			w.wildcard = false
			w.have = nil
			continue
		}
		delete(w.names, n)
		delete(w.force, n)
	}
}

func (st *stream) setNode(n *core.Node) {
	st.node = n.GetId()
	st.sync.setNode(n)
	attrs := []any{"node", n.GetId()}
	if c := n.GetCluster(); c != "" {
		attrs = append(attrs, "cluster", c)
	}
	if md := n.GetMetadata().GetFields(); md != nil {
		for _, k := range []string{"NAME", "NAMESPACE", "NODE_NAME", "CLUSTER_ID"} {
			if v := md[k].GetStringValue(); v != "" {
				attrs = append(attrs, k, v)
			}
		}
	}
	st.log = st.log.With(attrs...)
	st.log.Info("xDS stream started")
}

// push sends each subscribed type's difference between what the client
// holds and the latest snapshot. Nothing is sent before the first publish.
func (st *stream) push() error {
	snap := st.srv.snap.Load()
	if snap == nil {
		return nil
	}
	for idx, w := range st.watches {
		if w == nil {
			continue
		}
		cur := snap.types[idx]
		if w.wildcard && w.have == nil && w.initial == nil && len(w.names) == 0 && w.lastFull != cur.gen+1 {
			// A new wildcard client: send the shared, pre-encoded
			// full state.
			pm, err := cur.fullResponse(st.gs, typeURLs[idx])
			if err != nil {
				return err
			}
			w.have, w.respond, w.lastFull = cur, false, cur.gen+1
			clear(w.force)
			st.sync.sent(idx, fullNonce(cur.gen))
			if err := st.gs.SendMsg(pm); err != nil {
				return err
			}
			st.srv.stats.pushes.Add(1)
			st.srv.stats.resourcesSent.Add(uint64(len(cur.entries)))
			continue
		}
		ups, rms := w.diff(cur)
		if len(ups) == 0 && len(rms) == 0 && !w.respond {
			continue
		}
		w.respond = false
		st.nonce++
		nonce := strconv.FormatUint(st.nonce, 10)
		resp := &discovery.DeltaDiscoveryResponse{
			SystemVersionInfo: strconv.FormatUint(snap.gen, 10),
			TypeUrl:           typeURLs[idx],
			Resources:         ups,
			RemovedResources:  rms,
			Nonce:             nonce,
		}
		st.sync.sent(idx, nonce) // before Send: the ACK may be read before Send returns
		if err := st.gs.Send(resp); err != nil {
			return err
		}
		st.srv.stats.pushes.Add(1)
		st.srv.stats.resourcesSent.Add(uint64(len(ups)))
		st.srv.stats.removalsSent.Add(uint64(len(rms)))
	}
	return nil
}

// diff returns what to send so the client holds cur (restricted to its
// subscriptions), and records that it then does.
func (w *watch) diff(cur *typeSnapshot) (ups []*discovery.Resource, rms []string) {
	var sent map[string]struct{} // names in ups/rms, when force needs it
	note := func(n string) {
		if sent != nil {
			sent[n] = struct{}{}
		}
	}
	if len(w.force) > 0 {
		sent = map[string]struct{}{}
	}
	if w.wildcard {
		switch {
		case w.initial != nil:
			for n, e := range cur.entries {
				if w.initial[n] != e.version {
					ups = append(ups, e.res)
					note(n)
				}
			}
			for n := range w.initial {
				if _, ok := cur.entries[n]; !ok {
					rms = append(rms, n)
					note(n)
				}
			}
		case w.have == nil:
			ups = make([]*discovery.Resource, 0, len(cur.entries))
			for n, e := range cur.entries {
				ups = append(ups, e.res)
				note(n)
			}
		case w.have.gen != cur.gen:
			names, ok := cur.changedSince(w.have.gen)
			if !ok {
				names = unionKeys(w.have.entries, cur.entries)
			}
			for _, n := range names {
				e, o := cur.entries[n], w.have.entries[n]
				switch {
				case e != nil && (o == nil || o.version != e.version):
					ups = append(ups, e.res)
					note(n)
				case e == nil && o != nil:
					rms = append(rms, n)
					note(n)
				}
			}
		}
		w.initial = nil
		w.have = cur
	}
	for n, v := range w.names {
		e := cur.entries[n]
		_, forced := w.force[n]
		if _, done := sent[n]; done {
			forced = false
		}
		switch {
		case w.wildcard:
			// Changes are covered above; a forced name is sent
			// again, or reported absent.
			if forced && e != nil {
				ups = append(ups, e.res)
			} else if forced {
				rms = append(rms, n)
			}
		case e != nil && (forced || v != e.version):
			ups = append(ups, e.res)
			w.names[n] = e.version
		case e == nil && (forced || v != absent):
			rms = append(rms, n)
			w.names[n] = absent
		}
	}
	clear(w.force)
	return ups, rms
}

func unionKeys(a, b map[string]*entry) []string {
	out := make([]string, 0, len(b))
	for n := range b {
		out = append(out, n)
	}
	for n := range a {
		if _, ok := b[n]; !ok {
			out = append(out, n)
		}
	}
	return out
}
