package limit

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ErrLimited is wrapped by every refusal; errors.As with *LimitError names
// the limit.
var ErrLimited = errors.New("connection limit reached")

// Kinds of limit, as they appear in metrics and logs.
const (
	KindInProgress = "in_progress"
	KindOpen       = "open"
	KindRate       = "rate"
)

// LimitError is a refusal: which limit, its configured value, and whose
// (the Limiter's name: "" for a party's own, e.g. "node" for a parent).
type LimitError struct {
	Kind  string
	Limit float64
	Scope string
}

func (e *LimitError) Error() string {
	whose := ""
	if e.Scope != "" {
		whose = " (" + e.Scope + ")"
	}
	switch e.Kind {
	case KindRate:
		return fmt.Sprintf("%v%s: more than %g new connections per second", ErrLimited, whose, e.Limit)
	case KindInProgress:
		return fmt.Sprintf("%v%s: %g connections already in progress", ErrLimited, whose, e.Limit)
	default:
		return fmt.Sprintf("%v%s: %g connections already open", ErrLimited, whose, e.Limit)
	}
}

func (e *LimitError) Unwrap() error { return ErrLimited }

// Config is one party's budget. Zero turns a limit off.
type Config struct {
	// MaxInProgress bounds connections accepted but not yet connected
	// upstream (dials, HBONE streams not yet answered).
	MaxInProgress int
	// MaxOpen bounds connections established and relaying.
	MaxOpen int
	// Rate is new connections per second, with bursts up to Burst (default
	// twice Rate).
	Rate  float64
	Burst int
}

// Defaults are per pod and direction: generous for a busy service, small
// against a node's budget of threads and descriptors.
var Defaults = Config{MaxInProgress: 256, MaxOpen: 10000, Rate: 1000, Burst: 2000}

// Validate reports a negative or inconsistent value.
func (c Config) Validate() error {
	if c.MaxInProgress < 0 || c.MaxOpen < 0 || c.Rate < 0 || c.Burst < 0 {
		return fmt.Errorf("connection limits must not be negative (in progress %d, open %d, rate %g, burst %d)",
			c.MaxInProgress, c.MaxOpen, c.Rate, c.Burst)
	}
	return nil
}

// Limiter is one party's budget in use. A Limiter with a parent (a node's
// budget shared by every party) admits only when its parent admits too.
type Limiter struct {
	cfg    Config
	name   string
	parent *Limiter
	bucket *rate.Limiter // nil: no rate limit

	mu         sync.Mutex
	inProgress int
	open       int
}

// New returns a Limiter for cfg.
func New(cfg Config) *Limiter { return NewChild(nil, "", cfg) }

// NewChild returns a Limiter for cfg under parent (nil for none); name is
// the Scope of its refusals.
func NewChild(parent *Limiter, name string, cfg Config) *Limiter {
	l := &Limiter{cfg: cfg, name: name, parent: parent}
	if cfg.Rate > 0 {
		burst := cfg.Burst
		if burst <= 0 {
			burst = max(1, int(2*cfg.Rate))
		}
		l.bucket = rate.NewLimiter(rate.Limit(cfg.Rate), burst)
	}
	return l
}

// Admit starts a connection: it counts as in progress until Established.
func (l *Limiter) Admit() (*Ticket, error) {
	return l.admitAt(time.Now())
}

func (l *Limiter) admitAt(now time.Time) (*Ticket, error) {
	var pt *Ticket
	if l.parent != nil {
		var err error
		if pt, err = l.parent.admitAt(now); err != nil {
			return nil, err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var err error
	switch {
	case l.cfg.MaxInProgress > 0 && l.inProgress >= l.cfg.MaxInProgress:
		err = &LimitError{KindInProgress, float64(l.cfg.MaxInProgress), l.name}
	case l.cfg.MaxOpen > 0 && l.open+l.inProgress >= l.cfg.MaxOpen:
		err = &LimitError{KindOpen, float64(l.cfg.MaxOpen), l.name}
	case l.bucket != nil && !l.bucket.AllowN(now, 1):
		err = &LimitError{KindRate, l.cfg.Rate, l.name}
	}
	if err != nil {
		pt.Done() // nil-safe
		return nil, err
	}
	l.inProgress++
	return &Ticket{l: l, parent: pt}, nil
}

// Counts returns the connections in progress and open.
func (l *Limiter) Counts() (inProgress, open int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inProgress, l.open
}

// idleAt reports whether l holds nothing and its bucket is full at now, so
// forgetting it changes no later decision.
func (l *Limiter) idleAt(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inProgress != 0 || l.open != 0 {
		return false
	}
	return l.bucket == nil || l.bucket.TokensAt(now) >= float64(l.bucket.Burst())
}

// Ticket is one admitted connection (and its parent's ticket).
type Ticket struct {
	l           *Limiter
	parent      *Ticket
	established bool
	done        bool
}

// Established moves the connection from in progress to open.
func (t *Ticket) Established() {
	if t == nil {
		return
	}
	t.parent.Established()
	t.l.mu.Lock()
	defer t.l.mu.Unlock()
	if t.established || t.done {
		return
	}
	t.established = true
	t.l.inProgress--
	t.l.open++
}

// Done gives the connection's slot back.
func (t *Ticket) Done() {
	if t == nil {
		return
	}
	t.parent.Done()
	t.l.mu.Lock()
	defer t.l.mu.Unlock()
	if t.done {
		return
	}
	t.done = true
	if t.established {
		t.l.open--
	} else {
		t.l.inProgress--
	}
}
