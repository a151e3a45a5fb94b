package localcluster

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sample(gen int64, label string) *State {
	return &State{
		Generation: gen,
		Namespaces: []Namespace{{Name: "demo", Labels: map[string]string{"istio.io/dataplane-mode": label}}},
		Pods: []Pod{{UID: "u1", Name: "a", Namespace: "demo", Node: "n1", ServiceAccount: "sa",
			Netns: "/var/run/netns/x", IPs: []netip.Addr{netip.MustParseAddr("10.244.0.2")}}},
	}
}

func TestWriteLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "cluster.json")
	if err := Write(path, sample(1, "ambient")); err != nil {
		t.Fatal(err)
	}
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := s.Pod("demo", "a")
	if !ok || p.IPs[0] != netip.MustParseAddr("10.244.0.2") {
		t.Fatalf("pod = %+v, %v", p, ok)
	}
	if ns, ok := s.Namespace("demo"); !ok || ns.Labels["istio.io/dataplane-mode"] != "ambient" {
		t.Fatalf("namespace = %+v", ns)
	}
}

func TestValidate(t *testing.T) {
	s := sample(1, "ambient")
	s.Pods = append(s.Pods, Pod{UID: "u1", Name: "b", Namespace: "nope", Node: "n1", ServiceAccount: "sa"})
	err := Write(filepath.Join(t.TempDir(), "c.json"), s)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{"uid \"u1\" is used twice", "namespace \"nope\" is not listed", "netns is empty"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cluster.json")
	if err := Write(path, sample(1, "ambient")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan *State, 10)
	errs := make(chan error, 10)
	go Watch(ctx, path, 10*time.Millisecond, func(s *State) { got <- s }, func(err error) { errs <- err })
	wait := func() *State {
		select {
		case s := <-got:
			return s
		case <-time.After(5 * time.Second):
			t.Fatal("no state delivered within 5s")
			return nil
		}
	}
	if s := wait(); s.Generation != 1 {
		t.Fatalf("first generation %d", s.Generation)
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("error %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("bad file not reported")
	}
	if err := Write(path, sample(2, "none")); err != nil {
		t.Fatal(err)
	}
	if s := wait(); s.Generation != 2 || s.Namespaces[0].Labels["istio.io/dataplane-mode"] != "none" {
		t.Fatalf("second state %+v", s)
	}
}
