package zconfig

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/ztunnel/admin"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// Source reads a path (admin.ConfigDumpPath) from one ztunnel's admin
// endpoint and returns the body of a 200 answer.
type Source interface {
	Get(ctx context.Context, path string) ([]byte, error)
}

// Kinds a table can show.
const (
	Workloads    = "workloads"
	Services     = "services"
	Policies     = "policies"
	Certificates = "certificates"
	Connections  = "connections"
	All          = "all"
)

// Kinds lists the kinds in the order `all` shows them.
var Kinds = []string{Workloads, Services, Policies, Certificates, Connections}

// Output formats.
const (
	Short = "short"
	JSON  = "json"
	YAML  = "yaml"
)

// Formats lists the output formats.
var Formats = []string{Short, JSON, YAML}

// Dump is a parsed /config_dump. Raw keeps each section's entries as the
// ztunnel sent them (for -o json|yaml); the typed fields are for tables.
type Dump struct {
	Raw          admin.ConfigDump
	Workloads    []*workloadapi.Workload
	Services     []*workloadapi.Service
	Policies     []*security.Authorization
	Certificates []admin.Certificate
	Pods         []proxy.PodStatus
}

// Fetch reads and parses the config dump from src.
func Fetch(ctx context.Context, src Source) (*Dump, error) {
	body, err := src.Get(ctx, admin.ConfigDumpPath)
	if err != nil {
		return nil, err
	}
	return Parse(body)
}

// Parse reads a /config_dump document.
func Parse(data []byte) (*Dump, error) {
	var d Dump
	if err := json.Unmarshal(data, &d.Raw); err != nil {
		return nil, fmt.Errorf("decoding ztunnel's config_dump: %w", err)
	}
	st, err := json.Marshal(state.Dump{Workloads: d.Raw.Workloads, Services: d.Raw.Services, Policies: d.Raw.Policies})
	if err != nil {
		return nil, err
	}
	snap, err := state.ParseConfig(st)
	if err != nil {
		return nil, fmt.Errorf("decoding ztunnel's config_dump (is ambitctl as new as the ztunnel?): %w", err)
	}
	d.Workloads, d.Services, d.Policies = snap.Workloads, snap.Services, snap.Policies
	d.Certificates, d.Pods = d.Raw.Certificates, d.Raw.Pods
	return &d, nil
}

// CheckKind and CheckFormat return an error naming the choices.
func CheckKind(kind string) error {
	for _, k := range append(Kinds, All) {
		if k == kind {
			return nil
		}
	}
	return fmt.Errorf("unknown kind %q: use one of %s, %s", kind, strings.Join(Kinds, ", "), All)
}

// CheckFormat checks an -o value.
func CheckFormat(format string) error {
	for _, f := range Formats {
		if f == format {
			return nil
		}
	}
	return fmt.Errorf("-o %q: use one of %s", format, strings.Join(Formats, ", "))
}

// Write renders kind (or All) of d in format to w; now decides
// certificate validity.
func Write(w io.Writer, d *Dump, kind, format string, now time.Time) error {
	if err := CheckKind(kind); err != nil {
		return err
	}
	if err := CheckFormat(format); err != nil {
		return err
	}
	if format != Short {
		var v any
		switch kind {
		case All:
			v = d.Raw
		case Workloads:
			v = d.Raw.Workloads
		case Services:
			v = d.Raw.Services
		case Policies:
			v = d.Raw.Policies
		case Certificates:
			v = d.Raw.Certificates
		case Connections:
			v = d.Raw.Pods
		}
		return writeData(w, v, format)
	}
	if kind != All {
		return writeTable(w, d, kind, now)
	}
	for i, k := range Kinds {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := writeTable(w, d, k, now); err != nil {
			return err
		}
	}
	return nil
}

func writeData(w io.Writer, v any, format string) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == YAML {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func writeTable(w io.Writer, d *Dump, kind string, now time.Time) error {
	var rows [][]string
	switch kind {
	case Workloads:
		rows = workloadRows(d)
	case Services:
		rows = serviceRows(d)
	case Policies:
		rows = policyRows(d)
	case Certificates:
		rows = certificateRows(d, now)
	case Connections:
		rows = connectionRows(d)
	}
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func workloadRows(d *Dump) [][]string {
	ws := append([]*workloadapi.Workload(nil), d.Workloads...)
	sort.SliceStable(ws, func(i, j int) bool {
		if a, b := ws[i].GetNamespace()+"."+ws[i].GetName(), ws[j].GetNamespace()+"."+ws[j].GetName(); a != b {
			return a < b
		}
		return ws[i].GetNode() < ws[j].GetNode()
	})
	rows := [][]string{{"NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"}}
	for _, w := range ws {
		var addrs []string
		for _, a := range w.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(a); ok {
				addrs = append(addrs, ip.Unmap().String())
			}
		}
		addr := strings.Join(addrs, ",")
		if addr == "" {
			addr = w.GetHostname()
		}
		rows = append(rows, []string{w.GetNamespace(), w.GetName(), addr, w.GetNode(),
			waypointName(w.GetWaypoint(), d.Services), protocol(w.GetTunnelProtocol())})
	}
	return rows
}

// protocol is the PROTOCOL column: how ztunnel reaches the workload.
func protocol(p workloadapi.TunnelProtocol) string {
	if p == workloadapi.TunnelProtocol_NONE {
		return "TCP"
	}
	return p.String()
}

// waypointName is the name of the service a waypoint address points at:
// "None" without a waypoint, the address itself when no service matches.
func waypointName(gw *workloadapi.GatewayAddress, svcs []*workloadapi.Service) string {
	if gw == nil {
		return "None"
	}
	if h := gw.GetHostname(); h != nil {
		for _, s := range svcs {
			if s.GetHostname() == h.GetHostname() && s.GetNamespace() == h.GetNamespace() {
				return s.GetName()
			}
		}
		return h.GetNamespace() + "/" + h.GetHostname()
	}
	a := gw.GetAddress()
	ip, _ := netip.AddrFromSlice(a.GetAddress())
	for _, s := range svcs {
		for _, sa := range s.GetAddresses() {
			if sip, ok := netip.AddrFromSlice(sa.GetAddress()); ok && sip == ip && sa.GetNetwork() == a.GetNetwork() {
				return s.GetName()
			}
		}
	}
	return ip.Unmap().String()
}

func serviceRows(d *Dump) [][]string {
	ss := append([]*workloadapi.Service(nil), d.Services...)
	sort.SliceStable(ss, func(i, j int) bool {
		return ss[i].GetNamespace()+"."+ss[i].GetName() < ss[j].GetNamespace()+"."+ss[j].GetName()
	})
	rows := [][]string{{"NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"}}
	for _, s := range ss {
		var vips []string
		for _, a := range s.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(a.GetAddress()); ok {
				vips = append(vips, ip.Unmap().String())
			}
		}
		key := s.GetNamespace() + "/" + s.GetHostname()
		all, healthy := 0, 0
		for _, w := range d.Workloads {
			if _, ok := w.GetServices()[key]; ok {
				all++
				if w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY {
					healthy++
				}
			}
		}
		rows = append(rows, []string{s.GetNamespace(), s.GetName(), strings.Join(vips, ","),
			waypointName(s.GetWaypoint(), d.Services), fmt.Sprintf("%d/%d", healthy, all)})
	}
	return rows
}

func policyRows(d *Dump) [][]string {
	ps := append([]*security.Authorization(nil), d.Policies...)
	sort.SliceStable(ps, func(i, j int) bool {
		return ps[i].GetNamespace()+"."+ps[i].GetName() < ps[j].GetNamespace()+"."+ps[j].GetName()
	})
	rows := [][]string{{"NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"}}
	for _, p := range ps {
		rows = append(rows, []string{p.GetNamespace(), p.GetName(), camel(p.GetAction().String()), camel(p.GetScope().String())})
	}
	return rows
}

// camel turns an enum name (WORKLOAD_SELECTOR) into ztunnel's spelling
// (WorkloadSelector).
func camel(s string) string {
	var b strings.Builder
	for _, part := range strings.Split(strings.ToLower(s), "_") {
		if part != "" {
			b.WriteString(strings.ToUpper(part[:1]) + part[1:])
		}
	}
	return b.String()
}

func certificateRows(d *Dump, now time.Time) [][]string {
	cs := append([]admin.Certificate(nil), d.Certificates...)
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].Identity < cs[j].Identity })
	rows := [][]string{{"CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"}}
	for _, c := range cs {
		valid := c.NotBefore != nil && c.Expiry != nil && !now.Before(*c.NotBefore) && now.Before(*c.Expiry)
		rows = append(rows, []string{c.Identity, "Leaf", c.State, fmt.Sprint(valid), orNA(c.Serial), timeOrNA(c.Expiry), timeOrNA(c.NotBefore)})
	}
	return rows
}

func orNA(s string) string {
	if s == "" {
		return "NA"
	}
	return s
}

func timeOrNA(t *time.Time) string {
	if t == nil {
		return "NA"
	}
	return t.UTC().Format(time.RFC3339)
}

func connectionRows(d *Dump) [][]string {
	ps := append([]proxy.PodStatus(nil), d.Pods...)
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].Namespace+"."+ps[i].Name < ps[j].Namespace+"."+ps[j].Name })
	rows := [][]string{{"NAMESPACE", "POD NAME", "IDENTITY", "OPEN CONNECTIONS"}}
	for _, p := range ps {
		rows = append(rows, []string{p.Namespace, p.Name, p.Identity, fmt.Sprint(p.OpenConns)})
	}
	return rows
}
