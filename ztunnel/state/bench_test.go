package state

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// benchMesh is the xdsbench shape: n Address resources, one service per
// eleven (workloads name one service each), 50 namespaces, a NAMESPACE and
// a selected policy per namespace.
func benchMesh(n int) Snapshot {
	services := max(n/11, 1)
	var snap Snapshot
	for i := range n - services {
		snap.Workloads = append(snap.Workloads, benchWorkload(i, services, 0))
	}
	for i := range services {
		ns := fmt.Sprintf("ns-%d", i%50)
		snap.Services = append(snap.Services, &workloadapi.Service{
			Name: fmt.Sprintf("svc-%d", i), Namespace: ns, Hostname: fmt.Sprintf("svc-%d.%s.svc.cluster.local", i, ns),
			Addresses: []*workloadapi.NetworkAddress{{Address: []byte{172, 16, byte(i >> 8), byte(i)}}},
			Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}},
		})
	}
	for i := range 50 {
		ns := fmt.Sprintf("ns-%d", i)
		snap.Policies = append(snap.Policies,
			&security.Authorization{Name: "ns-wide", Namespace: ns, Scope: security.Scope_NAMESPACE},
			&security.Authorization{Name: "selected", Namespace: ns, Scope: security.Scope_WORKLOAD_SELECTOR})
	}
	return snap
}

func benchWorkload(i, services, rev int) *workloadapi.Workload {
	ns := fmt.Sprintf("ns-%d", i%50)
	s := i % services
	return &workloadapi.Workload{
		Uid:       fmt.Sprintf("Kubernetes//Pod/%s/app-%d", ns, i),
		Name:      fmt.Sprintf("app-%d", i),
		Namespace: ns, Addresses: [][]byte{{10, byte(i >> 16), byte(i >> 8), byte(i)}},
		CanonicalRevision:     fmt.Sprintf("v%d", rev),
		Services:              map[string]*workloadapi.PortList{fmt.Sprintf("ns-%d/svc-%d.ns-%d.svc.cluster.local", s%50, s, s%50): {}},
		AuthorizationPolicies: []string{ns + "/selected"},
	}
}

func benchStore(b *testing.B, n int) *Store {
	s := newStore()
	if err := s.Set(benchMesh(n)); err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkApplyOne: one delta of one changed workload, as xDS sends a pod
// change, into a store of n resources.
func BenchmarkApplyOne(b *testing.B) {
	for _, n := range []int{1_000, 11_000, 50_000} {
		b.Run(fmt.Sprint("N=", n), func(b *testing.B) {
			s := benchStore(b, n)
			services := n / 11
			ws := make([]*workloadapi.Workload, 1024)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if i%len(ws) == 0 {
					b.StopTimer()
					for j := range ws {
						ws[j] = benchWorkload((i+j)*7919%(n-services), services, i+j+1)
					}
					b.StartTimer()
				}
				if err := s.Apply(Delta{Upsert: Snapshot{Workloads: []*workloadapi.Workload{ws[i%len(ws)]}}}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSet: a whole state of 11k resources. retained-B/op is the heap
// the store's indexes hold (the resources themselves excluded).
func BenchmarkSet(b *testing.B) {
	s := newStore()
	b.ReportAllocs()
	var retained float64
	for range b.N {
		b.StopTimer()
		_ = s.Set(Snapshot{})
		snap := benchMesh(11_000)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		if err := s.Set(snap); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		retained += float64(after.HeapAlloc) - float64(before.HeapAlloc)
		b.StartTimer()
	}
	b.ReportMetric(retained/float64(b.N), "retained-B/op")
}

func BenchmarkLookup(b *testing.B) {
	const n = 11_000
	s := benchStore(b, n)
	v := s.Load()
	w := v.WorkloadByUID("Kubernetes//Pod/ns-7/app-4007")
	if w == nil {
		b.Fatal("no workload")
	}
	wip := netip.AddrFrom4([4]byte{10, 0, 4007 >> 8, 4007 & 0xff})
	vip := netip.AddrFrom4([4]byte{172, 16, 0, 77})
	b.Run("WorkloadByAddr", func(b *testing.B) {
		for range b.N {
			if s.Load().WorkloadByAddr("", wip) != w {
				b.Fatal("miss")
			}
		}
	})
	b.Run("ServiceByAddr", func(b *testing.B) {
		for range b.N {
			if s.Load().ServiceByAddr("", vip) == nil {
				b.Fatal("miss")
			}
		}
	})
	b.Run("ServiceByAddrMiss", func(b *testing.B) {
		for range b.N {
			if s.Load().ServiceByAddr("", wip) != nil {
				b.Fatal("hit")
			}
		}
	})
	b.Run("WorkloadByUID", func(b *testing.B) {
		for range b.N {
			if s.Load().WorkloadByUID("Kubernetes//Pod/ns-7/app-4007") != w {
				b.Fatal("miss")
			}
		}
	})
	b.Run("Endpoints", func(b *testing.B) {
		for range b.N {
			if len(s.Load().Endpoints("ns-7", "svc-7.ns-7.svc.cluster.local")) == 0 {
				b.Fatal("miss")
			}
		}
	})
	b.Run("PoliciesFor", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if len(s.Load().PoliciesFor(w)) != 2 {
				b.Fatal("policies")
			}
		}
	})
}
