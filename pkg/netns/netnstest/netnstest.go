// Package netnstest holds helpers for netns-tier tests: tests that need root
// and create their own network namespaces.
//
// Names of test namespaces must start with a package-specific prefix passed
// to Main, which deletes leftovers of an earlier crashed run before the tests
// and fails the run if any are left after them.
package netnstest

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/pkg/netns"
)

// InCI reports whether the tests run in CI (CI=true), where a missing
// privilege or kernel feature is a failure rather than a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail skips the test, or fails it under CI=true.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("%s (CI=true: netns-tier tests must run)", msg)
	}
	t.Skip(msg)
}

// RequireRoot skips the test unless it runs as root (fails under CI=true).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "netns-tier test needs root")
	}
}

// Main runs the package's tests with leftover cleanup for namespaces named
// prefix*: it deletes them before the run and, after it, deletes any the
// tests left and makes the run fail. Call it from TestMain.
func Main(m *testing.M, prefix string) {
	if !strings.HasPrefix(prefix, "ambit-t-") {
		fmt.Fprintf(os.Stderr, "netnstest: prefix %q must start with ambit-t-\n", prefix)
		os.Exit(2)
	}
	if os.Geteuid() == 0 {
		if left := deleteAll(prefix); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "netnstest: deleted leftovers of an earlier run: %v\n", left)
		}
	}
	code := m.Run()
	if os.Geteuid() == 0 {
		if left := deleteAll(prefix); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "netnstest: tests left network namespaces behind (now deleted): %v\n", left)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

func deleteAll(prefix string) []string {
	names, err := netns.List(prefix)
	if err != nil {
		fmt.Fprintf(os.Stderr, "netnstest: %v\n", err)
		return nil
	}
	for _, n := range names {
		if err := netns.Delete(n); err != nil {
			fmt.Fprintf(os.Stderr, "netnstest: %v\n", err)
		}
	}
	return names
}

// New creates the named namespace and registers its deletion with
// t.Cleanup. It requires root.
func New(t testing.TB, name string) *os.File {
	t.Helper()
	RequireRoot(t)
	f, err := netns.Create(name)
	if err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() {
		f.Close()
		if err := netns.Delete(name); err != nil {
			t.Errorf("deleting namespace %s: %v", name, err)
		}
	})
	return f
}
