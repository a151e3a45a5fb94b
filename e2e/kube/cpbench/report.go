package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// percentile is the nearest-rank percentile of the non-negative values
// (negative ones mean "never"); NaN when there are none.
func percentile(vs []float64, p float64) float64 {
	var ok []float64
	for _, v := range vs {
		if v >= 0 {
			ok = append(ok, v)
		}
	}
	if len(ok) == 0 {
		return math.NaN()
	}
	slices.Sort(ok)
	i := int(math.Ceil(p/100*float64(len(ok)))) - 1
	return ok[min(max(i, 0), len(ok)-1)]
}

func fmtSec(s float64) string {
	switch {
	case math.IsNaN(s) || s < 0:
		return "n/a"
	case s < 1:
		return fmt.Sprintf("%.1f ms", s*1000)
	}
	return fmt.Sprintf("%.2f s", s)
}

func fmtBytes(b int64) string {
	if b <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f MB", float64(b)/1e6)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// row is one figure: its text per server and the number the ratio uses
// (NaN: no ratio).
type row struct {
	label string
	val   func(result) (string, float64)
}

func secRow(label string, f func(result) float64) row {
	return row{label, func(r result) (string, float64) { v := f(r); return fmtSec(v), v }}
}

func cpuRow(label string, f func(result) time.Duration) row {
	return row{label, func(r result) (string, float64) {
		v := f(r).Seconds()
		if v < 1 {
			return fmt.Sprintf("%.3f", v), v
		}
		return fmt.Sprintf("%.2f", v), v
	}}
}

// changeFigures are the per-change "all clients" times and every
// (client, change) time.
func changeFigures(r result) (all, each []float64) {
	for _, ch := range r.Changes {
		all = append(all, allClients(ch))
		each = append(each, ch.Latency...)
	}
	return all, each
}

func count(vs []float64) int {
	n := 0
	for _, v := range vs {
		if v >= 0 {
			n++
		}
	}
	return n
}

// Figure labels; the test looks for each.
var rows = []row{
	secRow("server start → ready", func(r result) float64 { return r.StartToReady.Seconds() }),
	secRow("server start → full state at one client", func(r result) float64 { return r.StartToFull.Seconds() }),
	cpuRow("server CPU-s, start to full state", func(r result) time.Duration { return r.StartCPU }),
	{"clients synced", func(r result) (string, float64) {
		return fmt.Sprintf("%d/%d", count(r.Sync), len(r.Sync)), math.NaN()
	}},
	secRow("initial sync p50", func(r result) float64 { return percentile(r.Sync, 50) }),
	secRow("initial sync p99", func(r result) float64 { return percentile(r.Sync, 99) }),
	secRow("initial sync max", func(r result) float64 { return percentile(r.Sync, 100) }),
	{"stream retries during sync", func(r result) (string, float64) {
		return fmt.Sprint(r.Retries), math.NaN()
	}},
	cpuRow("server CPU-s, sync of all clients", func(r result) time.Duration { return r.SyncCPU }),
	secRow("server busy after sync (settle wait)", func(r result) float64 { return r.Settle.Seconds() }),
	{"changes delivered to all clients", func(r result) (string, float64) {
		all, _ := changeFigures(r)
		return fmt.Sprintf("%d/%d", count(all), len(all)), math.NaN()
	}},
	secRow("change → all clients p50", func(r result) float64 { all, _ := changeFigures(r); return percentile(all, 50) }),
	secRow("change → all clients p99", func(r result) float64 { all, _ := changeFigures(r); return percentile(all, 99) }),
	secRow("change → one client p50", func(r result) float64 { _, each := changeFigures(r); return percentile(each, 50) }),
	secRow("change → one client p99", func(r result) float64 { _, each := changeFigures(r); return percentile(each, 99) }),
	secRow("change → one client max", func(r result) float64 { _, each := changeFigures(r); return percentile(each, 100) }),
	cpuRow("server CPU-s per change", func(r result) time.Duration {
		if len(r.Changes) == 0 {
			return 0
		}
		return r.ChangeCPU / time.Duration(len(r.Changes))
	}),
	cpuRow("(clients process CPU-s, sync)", func(r result) time.Duration { return r.ClientsSyncCPU }),
	cpuRow("(cluster CPU-s, sync)", func(r result) time.Duration { return r.ClusterSyncCPU }),
	cpuRow("(clients process CPU-s, all changes)", func(r result) time.Duration { return r.ClientsChangeCPU }),
	cpuRow("(cluster CPU-s, all changes)", func(r result) time.Duration { return r.ClusterChangeCPU }),
	{"server RSS after sync", func(r result) (string, float64) { return fmtBytes(r.RSSAfterSync), float64(r.RSSAfterSync) }},
	{"server peak RSS (VmHWM)", func(r result) (string, float64) { return fmtBytes(r.HWM), float64(r.HWM) }},
}

// report prints the table: one column per server and, with both, the
// ratio pilot/ambit (above 1: Ambit is lower, i.e. faster or smaller).
func report(w io.Writer, cfg config, pop populated, rs []result) {
	fmt.Fprintf(w, "\ncontrol-plane scale: %d pods, %d services (%d Address resources of the bench), %d namespaces, %d simulated nodes; %d clients; %d changes\n",
		pop.Pods, pop.Services, pop.Pods+pop.Services, pop.Namespaces, pop.Nodes, cfg.clients, cfg.changes)
	fmt.Fprintf(w, "objects created in %s (%.0f objects/s incl. status writes; EndpointSlices settled in %s)\n",
		pop.Took.Round(time.Millisecond), float64(pop.Nodes+pop.Services+pop.Pods)/pop.Took.Seconds(), pop.Settle.Round(time.Millisecond))
	fmt.Fprintf(w, "machine: %d cores shared by etcd, kube-apiserver, kube-controller-manager, the server under test and the clients process; servers measured one after the other; load average now %s\n",
		runtime.NumCPU(), loadAvg())
	for _, r := range rs {
		fmt.Fprintf(w, "load average when %s started: %s\n", r.Server, r.LoadAvg)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	ambit, pilotIdx := -1, -1
	hdr := "figure"
	for i, r := range rs {
		hdr += "\t" + r.Server
		switch r.Server {
		case "ambit":
			ambit = i
		case "pilot":
			pilotIdx = i
		}
	}
	ratio := ambit >= 0 && pilotIdx >= 0
	if ratio {
		hdr += "\tpilot/ambit"
	}
	fmt.Fprintln(tw, hdr+"\t")
	for _, rw := range rows {
		line := rw.label
		vals := make([]float64, len(rs))
		for i, r := range rs {
			s, v := rw.val(r)
			line += "\t" + s
			vals[i] = v
		}
		if ratio {
			a, p := vals[ambit], vals[pilotIdx]
			switch {
			case math.IsNaN(a) || math.IsNaN(p) || a < 0 || p < 0:
				line += "\t"
			case a == 0:
				line += "\t∞"
			default:
				line += fmt.Sprintf("\t%.1f×", p/a)
			}
		}
		fmt.Fprintln(tw, line+"\t")
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "\nsync: stream open to every bench Address at the client; change: start of the API write to the response holding it; CPU-s from /proc/<pid>/stat, RSS from /proc/<pid>/status;\n(clients process) is the M simulated ztunnels and the API writes of the changes; (cluster) is etcd, kube-apiserver and kube-controller-manager (TokenReviews, watches)")
	for _, r := range rs {
		for _, e := range r.Errs {
			fmt.Fprintf(w, "%s: %s\n", r.Server, e)
		}
	}
}
