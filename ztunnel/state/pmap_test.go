package state

import (
	"maps"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestPmap checks the persistent map against a Go map under random
// batches of edits, with hashes that collide in a few bits, in all 64 bits
// (collision nodes), only in the top bits (the last, 4-bit level) and not
// at all; and checks that every published version stays unchanged.
func TestPmap(t *testing.T) {
	hashes := map[string]func(int) uint64{
		"spread":   func(k int) uint64 { return strHash(string(rune(k))) },
		"low bits": func(k int) uint64 { return uint64(k % 5) },
		"full":     func(k int) uint64 { return uint64(k%3) << 62 },
		"top bits": func(k int) uint64 { return uint64(k%40)<<58 | 0x123456789 },
	}
	for name, hash := range hashes {
		t.Run(name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			type version struct {
				m    pmap[int, int]
				want map[int]int
			}
			var m pmap[int, int]
			want := map[int]int{}
			var published []version
			for gen := uint64(1); gen <= 400; gen++ {
				for range r.IntN(20) {
					k := r.IntN(200)
					if r.IntN(3) == 0 {
						m.del(gen, hash(k), k)
						delete(want, k)
					} else {
						v := r.Int()
						m.set(gen, hash(k), k, v)
						want[k] = v
					}
				}
				checkPmap(t, &m, want, hash)
				published = append(published, version{m, maps.Clone(want)})
			}
			for _, p := range published {
				checkPmap(t, &p.m, p.want, hash)
			}
		})
	}
}

func checkPmap(t *testing.T, m *pmap[int, int], want map[int]int, hash func(int) uint64) {
	t.Helper()
	if m.len() != len(want) {
		t.Fatalf("len %d, want %d", m.len(), len(want))
	}
	for k := range 200 {
		got, ok := m.get(hash(k), k)
		if w, wok := want[k]; ok != wok || got != w {
			t.Fatalf("get(%d) = %d, %v; want %d, %v", k, got, ok, w, wok)
		}
	}
	n := 0
	m.each(func(k, v int) bool {
		n++
		if want[k] != v {
			t.Fatalf("each: %d=%d, want %d", k, v, want[k])
		}
		return true
	})
	if n != len(want) {
		t.Fatalf("each visited %d, want %d", n, len(want))
	}
	if len(want) == 0 && m.root != nil {
		t.Fatal("empty map keeps a root")
	}
}

func TestAddrHash(t *testing.T) {
	a := netip.MustParseAddr("10.0.0.1")
	if addrHash(NetAddr{"", a}) == addrHash(NetAddr{"", netip.AddrFrom16(a.As16())}) {
		t.Error("an IPv4 address and its IPv4-mapped form hash the same")
	}
	if addrHash(NetAddr{"", a}) == addrHash(NetAddr{"n", a}) {
		t.Error("the network is not hashed")
	}
}

func TestGetJoined(t *testing.T) {
	var m pmap[string, int]
	keys := []string{"ns/a", "ns/b", "a/b/c", "ns/", "/x", "ns/svc.ns.svc.cluster.local-and-a-long-hostname-past-one-block-of-the-hash-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}
	for i, k := range keys {
		m.set(1, strHash(k), k, i+1)
	}
	for i, k := range keys {
		for j := range len(k) {
			if k[j] != '/' {
				continue
			}
			a, b := k[:j], k[j+1:]
			if joinedHash(a, b) != strHash(k) {
				t.Fatalf("joinedHash(%q, %q) != strHash(%q)", a, b, k)
			}
			if got, ok := getJoined(&m, a, b); !ok || got != i+1 {
				t.Fatalf("getJoined(%q, %q) = %d, %v", a, b, got, ok)
			}
		}
	}
	for _, ab := range [][2]string{{"ns", "c"}, {"ns", "a/"}, {"n", "s/a"}, {"a", "b"}} {
		if _, ok := getJoined(&m, ab[0], ab[1]); ok {
			t.Fatalf("getJoined(%q, %q) found", ab[0], ab[1])
		}
	}
	if n := testing.AllocsPerRun(100, func() { getJoined(&m, "ns", "a") }); n != 0 {
		t.Fatalf("getJoined allocates %v times", n)
	}
}
