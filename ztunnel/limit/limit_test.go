package limit

import (
	"errors"
	"testing"
	"time"
)

func kindOf(t *testing.T, err error) string {
	t.Helper()
	var le *LimitError
	if !errors.As(err, &le) || !errors.Is(err, ErrLimited) {
		t.Fatalf("error %v is not a *LimitError wrapping ErrLimited", err)
	}
	return le.Kind
}

func TestInProgressAndOpen(t *testing.T) {
	l := New(Config{MaxInProgress: 2, MaxOpen: 3})
	a, err := l.Admit()
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Admit()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Admit(); kindOf(t, err) != KindInProgress {
		t.Fatalf("third in progress: %v", err)
	}
	a.Established()
	a.Established() // idempotent
	if ip, op := l.Counts(); ip != 1 || op != 1 {
		t.Fatalf("counts = %d in progress, %d open; want 1, 1", ip, op)
	}
	c, err := l.Admit()
	if err != nil {
		t.Fatal(err)
	}
	c.Established()
	b.Established()
	// 3 open: the open limit counts in-progress ones too.
	if _, err := l.Admit(); kindOf(t, err) != KindOpen {
		t.Fatalf("fourth: %v", err)
	}
	a.Done()
	a.Done() // idempotent
	if _, err := l.Admit(); err != nil {
		t.Fatalf("after Done: %v", err)
	}
	b.Done()
	c.Done()
	if ip, op := l.Counts(); ip != 1 || op != 0 {
		t.Fatalf("counts = %d, %d; want 1 in progress (the last admit), 0 open", ip, op)
	}
}

func TestDoneBeforeEstablished(t *testing.T) {
	l := New(Config{MaxInProgress: 1})
	tk, err := l.Admit()
	if err != nil {
		t.Fatal(err)
	}
	tk.Done()
	tk.Established() // after Done: no effect
	if ip, op := l.Counts(); ip != 0 || op != 0 {
		t.Fatalf("counts = %d, %d; want 0, 0", ip, op)
	}
	var nilTicket *Ticket
	nilTicket.Established()
	nilTicket.Done()
}

func TestRate(t *testing.T) {
	l := New(Config{Rate: 10, Burst: 5})
	now := time.Unix(1000, 0)
	for i := range 5 {
		tk, err := l.admitAt(now)
		if err != nil {
			t.Fatalf("burst admit %d: %v", i, err)
		}
		tk.Done()
	}
	if _, err := l.admitAt(now); kindOf(t, err) != KindRate {
		t.Fatalf("past the burst: %v", err)
	}
	// 10/s: one token every 100 ms.
	if _, err := l.admitAt(now.Add(100 * time.Millisecond)); err != nil {
		t.Fatalf("after 100 ms: %v", err)
	}
	if _, err := l.admitAt(now.Add(110 * time.Millisecond)); kindOf(t, err) != KindRate {
		t.Fatalf("10 ms later: %v", err)
	}
}

func TestZeroIsUnlimited(t *testing.T) {
	l := New(Config{})
	for range 10000 {
		if _, err := l.Admit(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestValidate(t *testing.T) {
	if err := Defaults.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (Config{Rate: -1}).Validate(); err == nil {
		t.Fatal("negative rate accepted")
	}
}

func TestSetForgetsIdleKeys(t *testing.T) {
	s := NewSet[string](nil, Config{MaxInProgress: 1, Rate: 1000, Burst: 1})
	s.sweep = 0
	a, err := s.Admit("a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Admit("a"); kindOf(t, err) != KindInProgress {
		t.Fatalf("second a: %v", err)
	}
	// Another key has its own budget.
	b, err := s.Admit("b")
	if err != nil {
		t.Fatal(err)
	}
	b.Done()
	a.Done()
	// Once idle and refilled (1 ms at 1000/s), keys are swept.
	deadline := time.Now().Add(2 * time.Second)
	for {
		tk, err := s.Admit("c")
		if err == nil {
			tk.Done()
		}
		if s.Len() == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("set still holds %d keys", s.Len())
		}
		time.Sleep(2 * time.Millisecond) // lets the buckets refill: the condition under test is time
	}
}

func TestParent(t *testing.T) {
	node := NewChild(nil, "node", Config{MaxOpen: 3})
	a := NewChild(node, "", Config{MaxOpen: 2})
	b := NewChild(node, "", Config{MaxOpen: 2})
	var held []*Ticket
	for range 2 {
		tk, err := a.Admit()
		if err != nil {
			t.Fatal(err)
		}
		tk.Established()
		held = append(held, tk)
	}
	if _, err := a.Admit(); kindOf(t, err) != KindOpen {
		t.Fatalf("a's third: %v", err)
	}
	tb, err := b.Admit()
	if err != nil {
		t.Fatalf("b's first: %v", err)
	}
	// The node's budget (3) is used up: b is refused by the node, and the
	// refusal says so.
	_, err = b.Admit()
	var le *LimitError
	if !errors.As(err, &le) || le.Scope != "node" || le.Kind != KindOpen {
		t.Fatalf("b's second: %v", err)
	}
	if ip, op := node.Counts(); ip != 1 || op != 2 {
		t.Fatalf("node counts %d, %d; want 1 in progress, 2 open", ip, op)
	}
	// A party's refusal gives the node's ticket back.
	if ip, _ := node.Counts(); ip != 1 {
		t.Fatalf("node in progress %d after a refusal", ip)
	}
	tb.Done()
	for _, tk := range held {
		tk.Done()
	}
	if ip, op := node.Counts(); ip != 0 || op != 0 {
		t.Fatalf("node counts %d, %d after Done; want 0, 0", ip, op)
	}
}
