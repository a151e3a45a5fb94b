package xds

import (
	"fmt"
	"strconv"
	"sync"

	"github.com/cespare/xxhash/v2"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// Resources is the whole state served to clients. Set takes ownership: the
// messages must not be modified after, and passing the same pointer again in
// a later Set lets the server skip re-encoding it.
type Resources struct {
	// Addresses by AddressKey: a workload's uid or a service's
	// "namespace/hostname".
	Addresses map[string]*workloadapi.Address
	// Authorizations by AuthorizationKey: "namespace/name".
	Authorizations map[string]*security.Authorization
}

// Type indexes, in push order: policies first, so that a workload arriving
// in the same push finds the policies it names.
const (
	idxAuthorization = iota
	idxAddress
	numTypes
)

var typeURLs = [numTypes]string{idxAuthorization: TypeAuthorization, idxAddress: TypeAddress}

func typeIndex(url string) (int, bool) {
	for i, u := range typeURLs {
		if u == url {
			return i, true
		}
	}
	return 0, false
}

// historyLen is how many generations of change lists a typeSnapshot keeps, so
// a stream a few generations behind diffs only the changed names.
const historyLen = 32

// entry is one encoded resource, shared read-only by every stream.
type entry struct {
	src     proto.Message // the message it was encoded from, for reuse
	version string
	res     *discovery.Resource
}

// step lists the names that changed (upserted or removed) from generation
// from to generation to.
type step struct {
	from, to uint64
	names    []string
}

// typeSnapshot is the immutable state of one type at generation gen. A type
// whose resources did not change keeps its gen across builds, so equal gens
// mean equal content.
type typeSnapshot struct {
	gen     uint64
	entries map[string]*entry
	history []step // ascending; history[len-1].to == gen

	// full is the encoded response holding every entry, made once on
	// first use and sent as is to every new wildcard stream.
	fullOnce sync.Once
	full     *grpc.PreparedMsg
	fullErr  error
}

// fullResponse returns t's whole content as one response encoded for gs's
// codec, with nonce fullNonce(t.gen); it is encoded once and shared.
func (t *typeSnapshot) fullResponse(gs grpc.ServerStream, typeURL string) (*grpc.PreparedMsg, error) {
	t.fullOnce.Do(func() {
		resp := &discovery.DeltaDiscoveryResponse{
			SystemVersionInfo: strconv.FormatUint(t.gen, 10),
			TypeUrl:           typeURL,
			Resources:         make([]*discovery.Resource, 0, len(t.entries)),
			Nonce:             fullNonce(t.gen),
		}
		for _, e := range t.entries {
			resp.Resources = append(resp.Resources, e.res)
		}
		pm := &grpc.PreparedMsg{}
		if err := pm.Encode(gs, resp); err != nil {
			t.fullErr = fmt.Errorf("encoding the full %s response: %w", typeURL, err)
			return
		}
		t.full = pm
	})
	return t.full, t.fullErr
}

// fullNonce is the nonce of a shared full response. A stream gets at most
// one per type and generation; other responses have numeric nonces.
func fullNonce(gen uint64) string { return "full-" + strconv.FormatUint(gen, 10) }

// snapshot is the immutable state of every type.
type snapshot struct {
	gen   uint64
	types [numTypes]*typeSnapshot
}

var emptyType = &typeSnapshot{entries: map[string]*entry{}}

// buildType encodes in against prev (reusing entries whose message pointer is
// unchanged) and returns prev itself when nothing changed.
func buildType[T proto.Message](prev *typeSnapshot, gen uint64, typeURL string, in map[string]T) (*typeSnapshot, error) {
	entries := make(map[string]*entry, len(in))
	var changed []string
	mo := proto.MarshalOptions{Deterministic: true}
	for name, msg := range in {
		if name == "" {
			return nil, fmt.Errorf("a %s resource has an empty name; key every resource by its name", typeURL)
		}
		old := prev.entries[name]
		if old != nil && old.src == proto.Message(msg) {
			entries[name] = old
			continue
		}
		b, err := mo.Marshal(msg)
		if err != nil {
			return nil, fmt.Errorf("encoding %s %q: %w", typeURL, name, err)
		}
		version := strconv.FormatUint(xxhash.Sum64(b), 16)
		if old != nil && old.version == version {
			entries[name] = &entry{src: msg, version: version, res: old.res}
			continue
		}
		entries[name] = &entry{src: msg, version: version, res: &discovery.Resource{
			Name:     name,
			Version:  version,
			Resource: &anypb.Any{TypeUrl: typeURL, Value: b},
		}}
		changed = append(changed, name)
	}
	for name := range prev.entries {
		if _, ok := entries[name]; !ok {
			changed = append(changed, name)
		}
	}
	if len(changed) == 0 {
		// Same content: keep prev's generation so streams find nothing
		// to send, but adopt the entries (they reference the newer
		// messages, for reuse by the next build).
		return &typeSnapshot{gen: prev.gen, entries: entries, history: prev.history}, nil
	}
	h := prev.history
	if len(h) >= historyLen {
		h = h[len(h)-historyLen+1:]
	}
	history := make([]step, 0, len(h)+1)
	history = append(history, h...)
	history = append(history, step{from: prev.gen, to: gen, names: changed})
	return &typeSnapshot{gen: gen, entries: entries, history: history}, nil
}

// changedSince returns the names that changed from generation from to t's
// generation, or ok=false when t's history does not reach back that far.
func (t *typeSnapshot) changedSince(from uint64) (names []string, ok bool) {
	if from == t.gen {
		return nil, true
	}
	for i, s := range t.history {
		if s.from != from {
			continue
		}
		rest := t.history[i:]
		if len(rest) == 1 {
			return s.names, true
		}
		seen := map[string]struct{}{}
		for _, s := range rest {
			for _, n := range s.names {
				if _, dup := seen[n]; !dup {
					seen[n] = struct{}{}
					names = append(names, n)
				}
			}
		}
		return names, true
	}
	return nil, false
}
