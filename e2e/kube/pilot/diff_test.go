package pilot_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/pilot"
	"github.com/ambit-mesh/ambit/istiod/config"
)

// fixtureReady reports whether a snapshot holds every fixture object in its
// final state (pod status written).
func fixtureReady(s *config.Snapshot) error {
	for _, fp := range fixturePods {
		p := s.Pods[config.Key(fp.ns, fp.name)]
		if p == nil {
			return fmt.Errorf("pod %s/%s not seen", fp.ns, fp.name)
		}
		if p.Status.PodIP != fp.ip {
			return fmt.Errorf("pod %s/%s: IP %q, want %q", fp.ns, fp.name, p.Status.PodIP, fp.ip)
		}
	}
	web := 0
	for _, p := range s.Pods {
		if p.Namespace == nsAmbient && p.Labels["app"] == "web" && p.Status.PodIP == webIP {
			web++
		}
	}
	if web != 1 {
		return fmt.Errorf("%d pods of Deployment web with IP %s", web, webIP)
	}
	if s.Pods[config.Key(nsAmbient, "terminating")].DeletionTimestamp == nil {
		return errors.New("pod terminating not seen deleted")
	}
	if s.EndpointSlices[config.Key(nsPlain, "manual-1")] == nil {
		return errors.New("EndpointSlice manual-1 not seen")
	}
	for _, svc := range fixtureServices {
		if s.Services[config.Key(svc.Namespace, svc.Name)] == nil {
			return fmt.Errorf("service %s/%s not seen", svc.Namespace, svc.Name)
		}
	}
	for _, p := range fixturePolicies() {
		if s.AuthorizationPolicies[config.Key(p.Namespace, p.Name)] == nil {
			return fmt.Errorf("AuthorizationPolicy %s/%s not seen", p.Namespace, p.Name)
		}
	}
	for _, p := range fixturePeerAuthentications() {
		if s.PeerAuthentications[config.Key(p.Namespace, p.Name)] == nil {
			return fmt.Errorf("PeerAuthentication %s/%s not seen", p.Namespace, p.Name)
		}
	}
	return nil
}

// TestPilot applies the fixture once, starts pilot-discovery, and runs the
// differential and interop tests against it.
func TestPilot(t *testing.T) {
	c := cluster.Shared(t)
	p := startPilot(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	applyFixture(ctx, t, c)

	// Interop first: Differential changes the fixture.
	t.Run("Interop", func(t *testing.T) { testInterop(ctx, t, c, p) })
	t.Run("Differential", func(t *testing.T) { testDifferential(ctx, t, c, p) })
}

// convergeTimeout bounds how long pilot may take to reflect the fixture
// (its debounce is 100 ms; informer events arrive within a second).
const convergeTimeout = 30 * time.Second

// testDifferential compares pilot's resources with Ambit's for the fixture,
// then again after a round of changes (pilot's stream stays open, so its
// incremental pushes and removals are what is compared; Ambit's side is
// rebuilt from a fresh source).
func testDifferential(ctx context.Context, t *testing.T, c *cluster.Cluster, p *pilot.Pilot) {
	pw := pilotWatch(ctx, t, c, p)
	compareWithAmbit(ctx, t, c, pw, "fixture", fixtureReady)
	if t.Failed() {
		return
	}
	mutateFixture(ctx, t, c)
	// Pilot keeps a stale converted_peer_authentication_server-ports after
	// the namespace's STRICT PeerAuthentication is deleted: its
	// PeerAuthDerivedPolicies collection (pilot/pkg/serviceregistry/ambient/
	// policies.go) reads the namespace and mesh PeerAuthentications with
	// PeerAuthByNamespace.Lookup, outside krt's dependency tracking, so a
	// change of those does not recompute the workload policy. With the mesh
	// PERMISSIVE and no namespace policy, port 9090 PERMISSIVE changes
	// nothing and Istio's own convertPeerAuthentication returns nil, as Ambit
	// does. An upstream bug: tolerated on this long-lived stream only, and
	// checked below against a freshly started pilot.
	stale := []string{nsAmbient + "/" + "converted_peer_authentication_server-ports"}
	compareWithAmbit(ctx, t, c, pw, "after changes (long-lived stream)", mutatedReady, stale...)

	_ = p.Stop() // its own cleanup reports a failure
	fresh := startPilot(t, c)
	compareWithAmbit(ctx, t, c, pilotWatch(ctx, t, c, fresh), "after changes (fresh pilot)", mutatedReady)
}

// compareWithAmbit waits until pilot's resources (pw) equal Ambit's for
// the state ready accepts. Authorizations named in pilotStale are dropped
// from pilot's side when Ambit has none of that name (known staleness of
// pilot, see the caller).
func compareWithAmbit(ctx context.Context, t *testing.T, c *cluster.Cluster, pw *pilot.Watcher, phase string, ready func(*config.Snapshot) error, pilotStale ...string) {
	t.Helper()
	ambitW, buildErrs := ambitSide(ctx, t, c, ready)
	for _, err := range buildErrs {
		t.Logf("%s: Ambit build note: %v", phase, err)
	}
	want := ambitW.Resources()
	cctx, cancel := context.WithTimeout(ctx, convergeTimeout)
	defer cancel()
	var report []string
	err := pw.WaitFor(cctx, "pilot's resources to equal Ambit's", func(got pilot.Resources) error {
		for _, name := range pilotStale {
			if _, ok := want.Authorizations[name]; !ok && got.Authorizations[name] != nil {
				t.Logf("%s: ignoring pilot's stale Authorization %s", phase, name)
				delete(got.Authorizations, name)
			}
		}
		report = diffResources(got, want)
		if len(report) > 0 {
			return fmt.Errorf("%d differences", len(report))
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s: %v\n%s", phase, err, strings.Join(report, "\n"))
	}
	if n := pw.NACKs(); len(n) > 0 {
		t.Errorf("%s: pilot's responses were NACKed: %v", phase, n)
	}
	got := pw.Resources()
	t.Logf("%s: pilot: %d addresses, %d authorizations; Ambit: %d addresses, %d authorizations",
		phase, len(got.Addresses), len(got.Authorizations), len(want.Addresses), len(want.Authorizations))
}

// diffResources compares pilot's (got) and Ambit's (want) resources by xDS
// name after the documented normalizations, and describes each difference.
func diffResources(got, want pilot.Resources) []string {
	var out []string
	out = append(out, diffMaps("Address", normalizeAll(got.Addresses, normalizeAddress), normalizeAll(want.Addresses, normalizeAddress))...)
	out = append(out, diffMaps("Authorization", normalizeAll(got.Authorizations, normalizeAuthorization), normalizeAll(want.Authorizations, normalizeAuthorization))...)
	return out
}

func normalizeAll[T proto.Message](m map[string]T, norm func(string, T) (string, bool)) map[string]T {
	out := make(map[string]T, len(m))
	for k, v := range m {
		c := proto.Clone(v).(T)
		if nk, keep := norm(k, c); keep {
			out[nk] = c
		}
	}
	return out
}

func diffMaps[T proto.Message](kind string, got, want map[string]T) []string {
	keys := map[string]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range want {
		keys[k] = true
	}
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	var out []string
	for _, k := range names {
		g, gok := got[k]
		w, wok := want[k]
		switch {
		case !wok:
			out = append(out, fmt.Sprintf("%s %s: only from pilot:\n%s", kind, k, protoText(g)))
		case !gok:
			out = append(out, fmt.Sprintf("%s %s: only from Ambit:\n%s", kind, k, protoText(w)))
		default:
			if d := cmp.Diff(g, w, protocmp.Transform()); d != "" {
				out = append(out, fmt.Sprintf("%s %s (-pilot +ambit):\n%s", kind, k, d))
			}
		}
	}
	return out
}
