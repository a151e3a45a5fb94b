package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/identity"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code, rec.Body.String()
}

func TestReadiness(t *testing.T) {
	r := NewReadiness(CondState, CondCA, CondZDS)
	h := ReadinessHandler(r)
	code, body := get(t, h, ReadyPath)
	if code != 503 || !strings.Contains(body, "state: waiting") || !strings.Contains(body, "zds: waiting") {
		t.Fatalf("initial: %d %q", code, body)
	}
	r.Set(CondState, nil)
	r.Set(CondZDS, nil)
	r.Set(CondCA, errors.New("dial 10.0.0.1:15012: refused"))
	code, body = get(t, h, ReadyPath)
	if code != 503 || strings.Contains(body, "state:") || !strings.Contains(body, "ca: dial 10.0.0.1:15012: refused") {
		t.Fatalf("ca down: %d %q", code, body)
	}
	r.Set(CondCA, nil)
	if code, body = get(t, h, ReadyPath); code != 200 || body != "ready\n" {
		t.Fatalf("ready: %d %q", code, body)
	}
}

func TestConfigDump(t *testing.T) {
	st := state.New(state.Options{})
	snap, err := state.ParseConfig([]byte(`workloads:
- {uid: u1, name: a, namespace: ns, addresses: ["10.0.0.1"], tunnelProtocol: HBONE}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Set(snap); err != nil {
		t.Fatal(err)
	}
	exp := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	h := Handler(Sources{
		State: st.Dump,
		Certificates: func() []identity.CertInfo {
			return []identity.CertInfo{{Identity: spiffe.ID{TrustDomain: "cluster.local", Namespace: "ns", ServiceAccount: "default"}, NotAfter: exp, State: identity.StateAvailable}}
		},
		Pods: func() []proxy.PodStatus {
			return []proxy.PodStatus{{UID: "u1", Name: "a", Namespace: "ns", Listeners: map[string]string{"hbone": "[::]:15008"}}}
		},
		Info: map[string]string{"node": "node-a"},
	})
	code, body := get(t, h, ConfigDumpPath)
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	var d struct {
		Info         map[string]string
		Workloads    []map[string]any
		Policies     []any
		Certificates []map[string]any
		Pods         []proxy.PodStatus
	}
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if len(d.Workloads) != 1 || d.Workloads[0]["uid"] != "u1" || d.Policies == nil {
		t.Errorf("workloads/policies: %s", body)
	}
	if len(d.Certificates) != 1 || d.Certificates[0]["identity"] != "spiffe://cluster.local/ns/ns/sa/default" ||
		!strings.HasPrefix(d.Certificates[0]["expiry"].(string), "2030-01-01") {
		t.Errorf("certificates: %s", body)
	}
	if len(d.Pods) != 1 || d.Pods[0].Listeners["hbone"] != "[::]:15008" || d.Info["node"] != "node-a" {
		t.Errorf("pods/info: %s", body)
	}
	if code, _ := get(t, h, PprofPath); code != 200 {
		t.Errorf("pprof index: %d", code)
	}
}
