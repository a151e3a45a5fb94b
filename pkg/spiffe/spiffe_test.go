package spiffe

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	good := []struct {
		in   string
		want ID
	}{
		{"spiffe://cluster.local/ns/default/sa/client", ID{"cluster.local", "default", "client"}},
		{"spiffe://td_1.example-x/ns/a-b.c/sa/x9", ID{"td_1.example-x", "a-b.c", "x9"}},
	}
	for _, c := range good {
		got, err := Parse(c.in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.in, err)
		}
		if got != c.want {
			t.Fatalf("Parse(%q) = %+v, want %+v", c.in, got, c.want)
		}
		if got.String() != c.in {
			t.Fatalf("String() = %q, want %q", got.String(), c.in)
		}
		if got.URL().String() != c.in {
			t.Fatalf("URL() = %q, want %q", got.URL(), c.in)
		}
	}
	bad := map[string]string{
		"":                                                               "does not start with spiffe://",
		"http://cluster.local/ns/a/sa/b":                                 "does not start",
		"spiffe://cluster.local":                                         "no path",
		"spiffe:///ns/a/sa/b":                                            "empty trust domain",
		"spiffe://Cluster.local/ns/a/sa/b":                               "has character",
		"spiffe://cluster.local/ns/a/sa":                                 "path of",
		"spiffe://cluster.local/ns/a/sa/b/c":                             "path of",
		"spiffe://cluster.local/sa/b/ns/a":                               "path of",
		"spiffe://cluster.local/ns//sa/b":                                "empty namespace",
		"spiffe://cluster.local/ns/a/sa/":                                "empty service account",
		"spiffe://cluster.local/ns/-a/sa/b":                              "not a Kubernetes name",
		"spiffe://cluster.local/ns/a/sa/B":                               "not a Kubernetes name",
		"spiffe://cluster.local/ns/a/sa/b?x=1":                           "no query",
		"spiffe://cluster.local:80/ns/a/sa/b":                            "no query",
		"spiffe://u@cluster.local/ns/a/sa/b":                             "no query",
		"spiffe://cluster.local/ns/a%20/sa/b":                            "no query",
		"spiffe://cluster.local/ns/a/sa/b#frag":                          "no query",
		"spiffe://" + strings.Repeat("a", 256) + "/ns/a/sa/b":            "longer than 255",
		"spiffe://cluster.local/ns/" + strings.Repeat("a", 64) + "/sa/b": "longer than 63",
	}
	for in, want := range bad {
		_, err := Parse(in)
		if err == nil {
			t.Errorf("Parse(%q) succeeded, want error containing %q", in, want)
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want ErrInvalid containing %q", in, err, want)
		}
	}
}

func TestNew(t *testing.T) {
	if _, err := New("cluster.local", "ns", "sa"); err != nil {
		t.Fatal(err)
	}
	if _, err := New("cluster.local", "NS", "sa"); err == nil {
		t.Fatal("New accepted an upper-case namespace")
	}
}

func TestFromURIs(t *testing.T) {
	u1, _ := url.Parse("spiffe://cluster.local/ns/a/sa/b")
	u2, _ := url.Parse("spiffe://cluster.local/ns/a/sa/c")
	if _, err := FromURIs(nil); err == nil {
		t.Fatal("no URI accepted")
	}
	if _, err := FromURIs([]*url.URL{u1, u2}); err == nil {
		t.Fatal("two URIs accepted")
	}
	id, err := FromURIs([]*url.URL{u1})
	if err != nil || id.ServiceAccount != "b" {
		t.Fatalf("FromURIs = %v, %v", id, err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"spiffe://cluster.local/ns/default/sa/x", "spiffe://a/ns/b/sa/c/d", "spiffe://", "spiffe://a/ns/%41/sa/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		// A parsed ID round-trips exactly, and through url.Parse.
		if id.String() != s {
			t.Fatalf("round trip %q -> %q", s, id.String())
		}
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("valid ID %q is not a URL: %v", s, err)
		}
		again, err := FromURIs([]*url.URL{u})
		if err != nil || again != id {
			t.Fatalf("via URL: %v, %v", again, err)
		}
	})
}
