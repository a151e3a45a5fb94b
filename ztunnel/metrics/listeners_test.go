package metrics

import (
	"slices"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// series returns the gauge's series as "namespace/pod/port=value".
func series(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if mf.GetName() != "ambit_ztunnel_foreign_listeners" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			out = append(out, l["namespace"]+"/"+l["pod"]+"/"+l["port"]+"="+strconv.FormatFloat(m.GetGauge().GetValue(), 'g', -1, 64))
		}
	}
	slices.Sort(out)
	return out
}

func TestForeignListeners(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := NewForeignListeners(reg)
	f.Set("web-1", "demo", 15008, 2)
	f.Set("web-2", "demo", 15001, 1)
	if got, want := series(t, reg), []string{"demo/web-1/15008=2", "demo/web-2/15001=1"}; !slices.Equal(got, want) {
		t.Errorf("series %v, want %v", got, want)
	}
	f.Set("web-1", "demo", 15008, 0)
	if got, want := series(t, reg), []string{"demo/web-2/15001=1"}; !slices.Equal(got, want) {
		t.Errorf("after setting web-1 to 0: series %v, want %v (its series removed)", got, want)
	}
}
