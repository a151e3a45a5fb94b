package pilot_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/pilot"
	"github.com/ambit-mesh/ambit/istiod/ambient"
	"github.com/ambit-mesh/ambit/ztunnel/admin"
	"github.com/ambit-mesh/ambit/ztunnel/state"
	ztxds "github.com/ambit-mesh/ambit/ztunnel/xds"
)

// testInterop runs Ambit's ztunnel workload discovery (ztunnel/xds into a
// ztunnel/state store, behind ztunnel/admin's /config_dump) against
// pilot-discovery's secure port, authenticated as Istio's ztunnel is, and
// checks that ztunnel accepts everything pilot sends (no NACK), that its
// /config_dump lists the fixture's workloads, services and policies, and
// that its views answer the questions its proxies ask.
func testInterop(ctx context.Context, t *testing.T, c *cluster.Cluster, p *pilot.Pilot) {
	tlsConf, token := ztunnelCredentials(ctx, t, c, p)
	store := state.New(state.Options{})
	id, md := pilot.ZtunnelNode("172.18.0.10", "ztunnel-a", pilot.Namespace, "ztunnel", nodeA)
	client, err := ztxds.New(ztxds.Options{
		Address:      p.SecureGRPCAddr,
		ServerName:   pilot.ServerName,
		RootCAs:      tlsConf.RootCAs,
		Token:        func(context.Context) (string, error) { return token, nil },
		NodeID:       id,
		NodeMetadata: md,
		Store:        store,
		Logger:       slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- client.Run(cctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ztunnel xds client: %v", err)
		}
		_ = client.Close()
	})
	select {
	case <-client.Synced():
	case <-ctx.Done():
		t.Fatalf("ztunnel's xDS client did not sync from pilot: %v (stats %+v)", ctx.Err(), client.Stats())
	}

	srv := httptest.NewServer(admin.Handler(admin.Sources{State: store.Dump}))
	defer srv.Close()

	wantWorkloads := map[string]bool{}
	for _, fp := range fixturePods {
		if fp.ip != "" && fp.phase == "" {
			wantWorkloads[ambient.PodUID(pilot.ClusterID, fp.ns, fp.name)] = true
		}
	}
	wantServices := map[string]bool{}
	for _, s := range fixtureServices {
		if s.Spec.Type == corev1.ServiceTypeExternalName {
			continue // served by DNS, not sent to ztunnel
		}
		wantServices[s.Namespace+"/"+s.Name+"."+s.Namespace+".svc."+pilot.DomainSuffix] = true
	}
	wantPolicies := map[string]bool{
		nsAmbient + "/allow-client":                               true,
		nsAmbient + "/deny-plain-ns":                              true,
		pilot.Namespace + "/global-deny":                          true,
		pilot.Namespace + "/istio_converted_static_strict":        true,
		nsAmbient + "/converted_peer_authentication_server-ports": true,
	}
	cctx2, cancel2 := context.WithTimeout(ctx, convergeTimeout)
	defer cancel2()
	var dump dumpNames
	var last error
	err = cluster.Eventually(cctx2, "ztunnel's /config_dump to list the fixture", func(context.Context) error {
		var err error
		if dump, err = fetchDump(ctx, srv.URL+"/config_dump"); err == nil {
			err = firstErr(
				missing("workloads", dump.workloads, wantWorkloads),
				missing("services", dump.services, wantServices),
				missing("policies", dump.policies, wantPolicies))
		}
		last = err
		return err
	})
	if err != nil {
		t.Fatalf("%v; last: %v", err, last)
	}
	if s := client.Stats(); s.NACKs > 0 {
		t.Errorf("Ambit's ztunnel NACKed %d of pilot's responses (stats %+v); see the log above", s.NACKs, s)
	}

	// What the proxies ask of the store.
	v := store.Load()
	svc := v.ServiceByName(nsAmbient, "server."+nsAmbient+".svc."+pilot.DomainSuffix)
	if svc == nil {
		t.Fatal("store has no service server")
	}
	var eps []string
	for _, w := range v.Endpoints(nsAmbient, svc.Hostname) {
		eps = append(eps, w.Name)
	}
	sort.Strings(eps)
	// Unhealthy endpoints (server-2 not Ready, terminating being deleted)
	// are listed too: the router skips them.
	if got := strings.Join(eps, ","); got != "server-1,server-2,terminating" {
		t.Errorf("endpoints of service server: %s, want server-1,server-2,terminating", got)
	}
	w := v.WorkloadByUID(ambient.PodUID(pilot.ClusterID, nsAmbient, "server-1"))
	if w == nil {
		t.Fatal("store has no workload server-1")
	}
	var pols []string
	for _, p := range v.PoliciesFor(w) {
		pols = append(pols, p.Namespace+"/"+p.Name)
	}
	sort.Strings(pols)
	want := []string{
		nsAmbient + "/allow-client", nsAmbient + "/allow-ipblock",
		nsAmbient + "/converted_peer_authentication_server-ports",
		nsAmbient + "/deny-http", nsAmbient + "/deny-plain-ns",
		pilot.Namespace + "/global-deny", pilot.Namespace + "/mesh-allow-health",
		// Not istio_converted_static_strict: server-1's port-level
		// PeerAuthentication replaces it with the converted policy.
	}
	if strings.Join(pols, " ") != strings.Join(want, " ") {
		t.Errorf("policies for server-1:\n got %v\nwant %v", pols, want)
	}
	t.Logf("ztunnel /config_dump from pilot: %d workloads, %d services, %d policies",
		len(dump.workloads), len(dump.services), len(dump.policies))
}

type dumpNames struct{ workloads, services, policies map[string]bool }

func fetchDump(ctx context.Context, url string) (dumpNames, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return dumpNames{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return dumpNames{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return dumpNames{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return dumpNames{}, fmt.Errorf("%s: %s", url, resp.Status)
	}
	var d admin.ConfigDump
	if err := json.Unmarshal(body, &d); err != nil {
		return dumpNames{}, fmt.Errorf("decoding %s: %w", url, err)
	}
	out := dumpNames{workloads: map[string]bool{}, services: map[string]bool{}, policies: map[string]bool{}}
	for _, raw := range d.Workloads {
		var w struct{ UID string }
		if err := json.Unmarshal(raw, &w); err != nil {
			return out, err
		}
		out.workloads[w.UID] = true
	}
	for _, raw := range d.Services {
		var s struct{ Namespace, Hostname string }
		if err := json.Unmarshal(raw, &s); err != nil {
			return out, err
		}
		out.services[s.Namespace+"/"+s.Hostname] = true
	}
	for _, raw := range d.Policies {
		var p struct{ Namespace, Name string }
		if err := json.Unmarshal(raw, &p); err != nil {
			return out, err
		}
		out.policies[p.Namespace+"/"+p.Name] = true
	}
	return out, nil
}

func missing(what string, have, want map[string]bool) error {
	var m []string
	for k := range want {
		if !have[k] {
			m = append(m, k)
		}
	}
	if len(m) == 0 {
		return nil
	}
	sort.Strings(m)
	return fmt.Errorf("%s missing: %s", what, strings.Join(m, ", "))
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// tWriter sends log lines to the test's log.
type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
