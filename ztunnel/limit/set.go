package limit

import (
	"sync"
	"time"
)

// Set holds one Limiter per key, made on first use with the Set's Config.
// Keys whose Limiter is idle (nothing in progress or open, token bucket
// full) are forgotten on a later sweep, so a Set's size follows its active
// parties, not every source it has ever seen.
type Set[K comparable] struct {
	cfg    Config
	parent *Limiter
	sweep  time.Duration

	mu        sync.Mutex
	m         map[K]*Limiter
	lastSweep time.Time
}

// NewSet returns a Set whose limiters use cfg, each under parent (nil for
// none).
func NewSet[K comparable](parent *Limiter, cfg Config) *Set[K] {
	return &Set[K]{cfg: cfg, parent: parent, sweep: 10 * time.Second, m: map[K]*Limiter{}}
}

// Admit admits a connection for key (see Limiter.Admit).
func (s *Set[K]) Admit(key K) (*Ticket, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.m[key]
	if l == nil {
		l = NewChild(s.parent, "", s.cfg)
		s.m[key] = l
	}
	if now.Sub(s.lastSweep) >= s.sweep {
		s.lastSweep = now
		for k, o := range s.m {
			if o != l && o.idleAt(now) {
				delete(s.m, k)
			}
		}
	}
	// Under s.mu, so a sweep never forgets a limiter between its lookup
	// and its admission.
	return l.admitAt(now)
}

// Len returns how many keys the Set holds.
func (s *Set[K]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// Counts returns key's connections in progress and open (0, 0 for a key
// the Set does not hold).
func (s *Set[K]) Counts(key K) (inProgress, open int) {
	s.mu.Lock()
	l := s.m[key]
	s.mu.Unlock()
	if l == nil {
		return 0, 0
	}
	return l.Counts()
}
