package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/identity"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// Paths served.
const (
	ReadyPath      = "/healthz/ready"
	ConfigDumpPath = "/config_dump"
	PprofPath      = "/debug/pprof/"
)

// Readiness conditions ztunnel uses.
const (
	CondState = "state"
	CondCA    = "ca"
	CondZDS   = "zds"
)

// Readiness is a set of named conditions.
type Readiness struct {
	mu    sync.Mutex
	order []string
	errs  map[string]error
}

// NewReadiness returns Readiness with the named conditions, all not ready
// ("waiting").
func NewReadiness(names ...string) *Readiness {
	r := &Readiness{errs: map[string]error{}}
	for _, n := range names {
		r.order = append(r.order, n)
		r.errs[n] = fmt.Errorf("waiting")
	}
	return r
}

// Set records a condition: nil is ready, an error is why it is not.
func (r *Readiness) Set(name string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.errs[name]; !ok {
		r.order = append(r.order, name)
	}
	r.errs[name] = err
}

// Check returns nil when every condition holds, else one line per failing
// condition: "<name>: <reason>".
func (r *Readiness) Check() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var lines []string
	for _, n := range r.order {
		if err := r.errs[n]; err != nil {
			lines = append(lines, n+": "+err.Error())
		}
	}
	if len(lines) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(lines, "\n"))
}

// ServeHTTP answers /healthz/ready.
func (r *Readiness) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := r.Check(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready:\n%s\n", err)
		return
	}
	fmt.Fprintln(w, "ready")
}

// ReadinessHandler serves r at ReadyPath.
func ReadinessHandler(r *Readiness) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(ReadyPath, r)
	return mux
}

// Sources are what /config_dump reads; nil ones are left out.
type Sources struct {
	State        func() state.Dump
	Certificates func() []identity.CertInfo
	Pods         func() []proxy.PodStatus
	// Info is static process information (node, trust domain, flags).
	Info map[string]string
}

// ConfigDump is the /config_dump document.
type ConfigDump struct {
	Info         map[string]string `json:"info,omitempty"`
	Version      uint64            `json:"version"`
	Workloads    []json.RawMessage `json:"workloads"`
	Services     []json.RawMessage `json:"services"`
	Policies     []json.RawMessage `json:"policies"`
	Certificates []Certificate     `json:"certificates"`
	Pods         []proxy.PodStatus `json:"pods"`
}

// Certificate is one identity's certificate in the dump.
type Certificate struct {
	Identity    string     `json:"identity"`
	State       string     `json:"state"`
	NotBefore   *time.Time `json:"notBefore,omitempty"`
	Expiry      *time.Time `json:"expiry,omitempty"`
	Serial      string     `json:"serial,omitempty"`
	NextRefresh *time.Time `json:"nextRefresh,omitempty"`
	LastError   string     `json:"lastError,omitempty"`
}

func certificate(c identity.CertInfo) Certificate {
	t := func(v time.Time) *time.Time {
		if v.IsZero() {
			return nil
		}
		return &v
	}
	return Certificate{
		Identity: c.Identity.String(), State: string(c.State), NotBefore: t(c.NotBefore), Expiry: t(c.NotAfter),
		Serial: c.Serial, NextRefresh: t(c.NextRefresh), LastError: c.LastError,
	}
}

// Dump collects the document.
func (s Sources) Dump() ConfigDump {
	d := ConfigDump{Info: s.Info}
	if s.State != nil {
		st := s.State()
		d.Version, d.Workloads, d.Services, d.Policies = st.Version, st.Workloads, st.Services, st.Policies
	}
	if s.Certificates != nil {
		for _, c := range s.Certificates() {
			d.Certificates = append(d.Certificates, certificate(c))
		}
	}
	if s.Pods != nil {
		d.Pods = s.Pods()
	}
	if d.Workloads == nil {
		d.Workloads = []json.RawMessage{}
	}
	if d.Services == nil {
		d.Services = []json.RawMessage{}
	}
	if d.Policies == nil {
		d.Policies = []json.RawMessage{}
	}
	if d.Certificates == nil {
		d.Certificates = []Certificate{}
	}
	if d.Pods == nil {
		d.Pods = []proxy.PodStatus{}
	}
	return d
}

// Handler serves /config_dump and /debug/pprof/. Serve it on a localhost
// address only: it shows the whole state.
func Handler(s Sources) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(ConfigDumpPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.Dump())
	})
	mux.HandleFunc(PprofPath, pprof.Index)
	mux.HandleFunc(PprofPath+"cmdline", pprof.Cmdline)
	mux.HandleFunc(PprofPath+"profile", pprof.Profile)
	mux.HandleFunc(PprofPath+"symbol", pprof.Symbol)
	mux.HandleFunc(PprofPath+"trace", pprof.Trace)
	return mux
}
