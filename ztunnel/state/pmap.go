package state

import (
	"encoding/binary"
	"hash/maphash"
	"math/bits"
)

// pmap is a persistent hash map: a hash array mapped trie (32-way, the
// CHAMP layout: entries and children in two bitmap-indexed arrays) with
// path copying. A pmap value is immutable once published; an edit returns
// the new root and shares every untouched node with the old one.
//
// Edits carry a generation (the version of the View being built): a node
// created by the same generation is owned by the current write and is
// edited in place, so a write of k entries allocates O(k) nodes for a bulk
// load and O(k·log32 N) for scattered ones, never O(N). Nodes of an older
// generation are never modified; a generation must not be reused once a
// View holding it is published.
//
// Callers pass the key's hash (strHash, addrHash) to every operation, so
// the trie needs no hasher and tests can force collisions.
type pmap[K comparable, V any] struct {
	root *pnode[K, V]
	n    int
}

type pentry[K comparable, V any] struct {
	hash uint64
	key  K
	val  V
}

// pnode is a trie node. At shift >= 64 (all hash bits used) it is a
// collision node: the maps are unused and data holds every entry with the
// same hash.
type pnode[K comparable, V any] struct {
	gen      uint64
	dataMap  uint32 // slots holding an entry
	childMap uint32 // slots holding a child node
	data     []pentry[K, V]
	kids     []*pnode[K, V]
}

const (
	pBits     = 5
	pMask     = 1<<pBits - 1
	pMaxShift = 64 // a node at this shift is a collision node
)

func (m *pmap[K, V]) len() int { return m.n }

// get returns the value of k (whose hash is h).
func (m *pmap[K, V]) get(h uint64, k K) (V, bool) {
	n := m.root
	for shift := uint(0); n != nil; shift += pBits {
		if shift >= pMaxShift {
			for i := range n.data {
				if n.data[i].key == k {
					return n.data[i].val, true
				}
			}
			break
		}
		bit := uint32(1) << ((h >> shift) & pMask)
		if n.dataMap&bit != 0 {
			e := &n.data[bits.OnesCount32(n.dataMap&(bit-1))]
			if e.hash == h && e.key == k {
				return e.val, true
			}
			break
		}
		if n.childMap&bit == 0 {
			break
		}
		n = n.kids[bits.OnesCount32(n.childMap&(bit-1))]
	}
	var zero V
	return zero, false
}

// set maps k (hash h) to v, editing in place the nodes of generation gen.
func (m *pmap[K, V]) set(gen, h uint64, k K, v V) {
	var added bool
	m.root, added = m.root.set(gen, 0, pentry[K, V]{h, k, v})
	if added {
		m.n++
	}
}

// del removes k (hash h) if present.
func (m *pmap[K, V]) del(gen, h uint64, k K) {
	var removed bool
	m.root, removed = m.root.del(gen, 0, h, k)
	if removed {
		m.n--
	}
}

// each calls f for every entry, in hash order, until f returns false.
func (m *pmap[K, V]) each(f func(K, V) bool) { m.root.each(f) }

// own returns n itself if generation gen owns it, else a copy owned by gen.
func (n *pnode[K, V]) own(gen uint64) *pnode[K, V] {
	if n.gen == gen {
		return n
	}
	c := &pnode[K, V]{gen: gen, dataMap: n.dataMap, childMap: n.childMap}
	if len(n.data) > 0 {
		c.data = make([]pentry[K, V], len(n.data), len(n.data)+1)
		copy(c.data, n.data)
	}
	if len(n.kids) > 0 {
		c.kids = make([]*pnode[K, V], len(n.kids), len(n.kids)+1)
		copy(c.kids, n.kids)
	}
	return c
}

func (n *pnode[K, V]) set(gen uint64, shift uint, e pentry[K, V]) (*pnode[K, V], bool) {
	if n == nil {
		if shift >= pMaxShift {
			return &pnode[K, V]{gen: gen, data: []pentry[K, V]{e}}, true
		}
		return &pnode[K, V]{gen: gen, dataMap: 1 << ((e.hash >> shift) & pMask), data: []pentry[K, V]{e}}, true
	}
	if shift >= pMaxShift {
		for i := range n.data {
			if n.data[i].key == e.key {
				n = n.own(gen)
				n.data[i] = e
				return n, false
			}
		}
		n = n.own(gen)
		n.data = append(n.data, e)
		return n, true
	}
	bit := uint32(1) << ((e.hash >> shift) & pMask)
	switch {
	case n.dataMap&bit != 0:
		i := bits.OnesCount32(n.dataMap & (bit - 1))
		if old := n.data[i]; old.hash == e.hash && old.key == e.key {
			n = n.own(gen)
			n.data[i].val = e.val
			return n, false
		}
		// Two entries share this slot: push both one level down.
		n = n.own(gen)
		old := n.data[i]
		sub, _ := (*pnode[K, V])(nil).set(gen, shift+pBits, old)
		sub, _ = sub.set(gen, shift+pBits, e)
		n.data = removeAt(n.data, i)
		n.dataMap &^= bit
		n.kids = insertAt(n.kids, bits.OnesCount32(n.childMap&(bit-1)), sub)
		n.childMap |= bit
		return n, true
	case n.childMap&bit != 0:
		i := bits.OnesCount32(n.childMap & (bit - 1))
		kid, added := n.kids[i].set(gen, shift+pBits, e)
		if kid != n.kids[i] {
			n = n.own(gen)
			n.kids[i] = kid
		}
		return n, added
	default:
		n = n.own(gen)
		n.data = insertAt(n.data, bits.OnesCount32(n.dataMap&(bit-1)), e)
		n.dataMap |= bit
		return n, true
	}
}

// del returns the node without key k; nil if it became empty. A child
// left with a single entry and no children is folded into its parent, so
// the trie stays as shallow as it would be if built without the removed
// entries.
func (n *pnode[K, V]) del(gen uint64, shift uint, h uint64, k K) (*pnode[K, V], bool) {
	if n == nil {
		return nil, false
	}
	if shift >= pMaxShift {
		for i := range n.data {
			if n.data[i].key == k {
				if len(n.data) == 1 {
					return nil, true
				}
				n = n.own(gen)
				n.data = removeAt(n.data, i)
				return n, true
			}
		}
		return n, false
	}
	bit := uint32(1) << ((h >> shift) & pMask)
	switch {
	case n.dataMap&bit != 0:
		i := bits.OnesCount32(n.dataMap & (bit - 1))
		if e := n.data[i]; e.hash != h || e.key != k {
			return n, false
		}
		if len(n.data) == 1 && len(n.kids) == 0 {
			return nil, true
		}
		n = n.own(gen)
		n.data = removeAt(n.data, i)
		n.dataMap &^= bit
		return n, true
	case n.childMap&bit != 0:
		i := bits.OnesCount32(n.childMap & (bit - 1))
		kid, removed := n.kids[i].del(gen, shift+pBits, h, k)
		if !removed {
			return n, false
		}
		switch {
		case kid == nil:
			if len(n.kids) == 1 && len(n.data) == 0 {
				return nil, true
			}
			n = n.own(gen)
			n.kids = removeAt(n.kids, i)
			n.childMap &^= bit
		case len(kid.kids) == 0 && len(kid.data) == 1:
			// Fold the lone entry up into this slot.
			n = n.own(gen)
			n.kids = removeAt(n.kids, i)
			n.childMap &^= bit
			n.data = insertAt(n.data, bits.OnesCount32(n.dataMap&(bit-1)), kid.data[0])
			n.dataMap |= bit
		default:
			n = n.own(gen)
			n.kids[i] = kid
		}
		return n, true
	default:
		return n, false
	}
}

func (n *pnode[K, V]) each(f func(K, V) bool) bool {
	if n == nil {
		return true
	}
	for i := range n.data {
		if !f(n.data[i].key, n.data[i].val) {
			return false
		}
	}
	for _, kid := range n.kids {
		if !kid.each(f) {
			return false
		}
	}
	return true
}

// insertAt inserts v at i; s must be owned by the caller.
func insertAt[T any](s []T, i int, v T) []T {
	var zero T
	s = append(s, zero)
	copy(s[i+1:], s[i:])
	s[i] = v
	return s
}

// removeAt removes the element at i; s must be owned by the caller.
func removeAt[T any](s []T, i int) []T {
	copy(s[i:], s[i+1:])
	var zero T
	s[len(s)-1] = zero
	return s[:len(s)-1]
}

var hashSeed = maphash.MakeSeed()

// strHash hashes a string key (uid, service or policy name, namespace).
func strHash(s string) uint64 { return maphash.String(hashSeed, s) }

// joinedHash is strHash(a + "/" + b) without building the string (a
// maphash.Hash depends only on the bytes written, not how).
func joinedHash(a, b string) uint64 {
	var h maphash.Hash
	h.SetSeed(hashSeed)
	h.WriteString(a)
	h.WriteByte('/')
	h.WriteString(b)
	return h.Sum64()
}

// getJoined is m.get for the key a + "/" + b, without building it: the
// lookups by namespace and hostname do not allocate.
func getJoined[V any](m *pmap[string, V], a, b string) (V, bool) {
	h := joinedHash(a, b)
	eq := func(k string) bool {
		return len(k) == len(a)+1+len(b) && k[len(a)] == '/' && k[:len(a)] == a && k[len(a)+1:] == b
	}
	n := m.root
	for shift := uint(0); n != nil; shift += pBits {
		if shift >= pMaxShift {
			for i := range n.data {
				if eq(n.data[i].key) {
					return n.data[i].val, true
				}
			}
			break
		}
		bit := uint32(1) << ((h >> shift) & pMask)
		if n.dataMap&bit != 0 {
			e := &n.data[bits.OnesCount32(n.dataMap&(bit-1))]
			if e.hash == h && eq(e.key) {
				return e.val, true
			}
			break
		}
		if n.childMap&bit == 0 {
			break
		}
		n = n.kids[bits.OnesCount32(n.childMap&(bit-1))]
	}
	var zero V
	return zero, false
}

// addrHash hashes an address key.
func addrHash(k NetAddr) uint64 {
	b := k.Addr.As16()
	hi := binary.LittleEndian.Uint64(b[:8]) ^ uint64(k.Addr.BitLen())
	lo := binary.LittleEndian.Uint64(b[8:])
	if k.Network != "" {
		hi ^= strHash(k.Network)
	}
	// The wyhash mix; the seed keeps the layout per process.
	m1, m0 := bits.Mul64(hi^addrSeed, lo^0xe7037ed1a0b428db)
	return m1 ^ m0
}

var addrSeed = strHash("addr")
