package pstatus

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/pkg/syncz"
)

// shortNames are the columns of the type URLs Ambit serves, in column
// order.
var shortNames = []struct{ url, name string }{
	{"type.googleapis.com/istio.workload.Address", "WDS"},
	{"type.googleapis.com/istio.security.Authorization", "WADS"},
	{"type.googleapis.com/envoy.config.cluster.v3.Cluster", "CDS"},
	{"type.googleapis.com/envoy.config.listener.v3.Listener", "LDS"},
	{"type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "RDS"},
	{"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", "EDS"},
	{"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "SDS"},
}

// ShortName is a type URL's column name.
func ShortName(typeURL string) string {
	for _, s := range shortNames {
		if s.url == typeURL {
			return s.name
		}
	}
	if i := strings.LastIndexAny(typeURL, "./"); i >= 0 {
		return strings.ToUpper(typeURL[i+1:])
	}
	return typeURL
}

func rank(name string) int {
	for i, s := range shortNames {
		if s.name == name {
			return i
		}
	}
	return len(shortNames)
}

// Parse decodes a /debug/syncz answer.
func Parse(data []byte) ([]syncz.Proxy, error) {
	var ps []syncz.Proxy
	if err := json.Unmarshal(data, &ps); err != nil {
		return nil, fmt.Errorf("decoding istiod's %s: %w (is istiod as new as ambitctl?)", syncz.Path, err)
	}
	return ps, nil
}

// Name is a proxy's NAME: pod.namespace when known, else its xDS node ID.
func Name(p syncz.Proxy) string {
	if p.Pod != "" {
		if p.Namespace != "" {
			return p.Pod + "." + p.Namespace
		}
		return p.Pod
	}
	return p.ID
}

// Write renders ps as a table ("short"), JSON or YAML.
func Write(w io.Writer, ps []syncz.Proxy, format string) error {
	switch format {
	case "json", "yaml":
		if ps == nil {
			ps = []syncz.Proxy{}
		}
		b, err := json.MarshalIndent(ps, "", "  ")
		if err != nil {
			return err
		}
		if format == "yaml" {
			if b, err = yaml.JSONToYAML(b); err != nil {
				return err
			}
			_, err = w.Write(b)
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case "short", "":
	default:
		return fmt.Errorf("-o %q: use one of short, json, yaml", format)
	}
	rows := append([]syncz.Proxy(nil), ps...)
	sort.SliceStable(rows, func(i, j int) bool {
		if rows[i].Kind != rows[j].Kind {
			return rows[i].Kind > rows[j].Kind // ztunnels first
		}
		return Name(rows[i]) < Name(rows[j])
	})
	seen := map[string]bool{}
	var cols []string
	for _, p := range rows {
		for _, t := range p.Types {
			if n := ShortName(t.TypeURL); !seen[n] {
				seen[n] = true
				cols = append(cols, n)
			}
		}
	}
	sort.SliceStable(cols, func(i, j int) bool {
		if ri, rj := rank(cols[i]), rank(cols[j]); ri != rj {
			return ri < rj
		}
		return cols[i] < cols[j]
	})
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	fmt.Fprintln(tw, strings.Join(append([]string{"NAME", "NODE", "KIND", "VERSION"}, cols...), "\t"))
	var nacks []string
	for _, p := range rows {
		cell := map[string]string{}
		for _, t := range p.Types {
			cell[ShortName(t.TypeURL)] = t.Status
			if t.Error != "" {
				nacks = append(nacks, fmt.Sprintf("%s %s: rejected: %s", Name(p), ShortName(t.TypeURL), t.Error))
			}
		}
		line := []string{Name(p), orDash(p.Node), p.Kind, orDash(p.Version)}
		for _, c := range cols {
			line = append(line, orDash(cell[c]))
		}
		fmt.Fprintln(tw, strings.Join(line, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range nacks {
		fmt.Fprintln(w, n)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
