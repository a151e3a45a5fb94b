package install

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/*/want")

var goldenEntry = PluginEntry{AgentSocket: "/var/run/ambit/cni-agent.sock", LogLevel: "info", Timeout: "30s"}

// readDir returns the regular files of dir by name.
func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func writeDir(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func names(m map[string][]byte) string {
	var n []string
	for k := range m {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, ",")
}

func newInstaller(t *testing.T, confDir string) *Installer {
	t.Helper()
	in, err := New(Config{ConfDir: confDir, Entry: goldenEntry})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestGolden(t *testing.T) {
	cases := []struct {
		dir         string
		uninstall   bool
		wantChanged bool
	}{
		{dir: "conf-to-conflist", wantChanged: true},
		{dir: "conflist-append", wantChanged: true},
		{dir: "already-present", wantChanged: false},
		{dir: "stale-entry", wantChanged: true},
		{dir: "primary-selection", wantChanged: true},
		{dir: "json-single", wantChanged: true},
		{dir: "remove-conflist", uninstall: true},
		{dir: "remove-restore-conf", uninstall: true},
	}
	for _, tc := range cases {
		t.Run(tc.dir, func(t *testing.T) {
			ctx := context.Background()
			input := readDir(t, filepath.Join("testdata", tc.dir, "in"))
			work := t.TempDir()
			writeDir(t, work, input)
			in := newInstaller(t, work)
			if tc.uninstall {
				if err := in.Uninstall(ctx); err != nil {
					t.Fatal(err)
				}
			} else {
				changed, err := in.Reconcile(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if changed != tc.wantChanged {
					t.Errorf("Reconcile changed = %v, want %v", changed, tc.wantChanged)
				}
			}
			got := readDir(t, work)
			wantDir := filepath.Join("testdata", tc.dir, "want")
			if *update {
				os.RemoveAll(wantDir)
				writeDir(t, wantDir, got)
				return
			}
			want := readDir(t, wantDir)
			if names(got) != names(want) {
				t.Fatalf("files = %s, want %s", names(got), names(want))
			}
			for name, w := range want {
				if !bytes.Equal(got[name], w) {
					t.Errorf("%s:\n got %s\nwant %s", name, got[name], w)
				}
			}

			// Level-triggered: a second pass writes nothing.
			if tc.uninstall {
				if err := in.Uninstall(ctx); err != nil {
					t.Fatal(err)
				}
			} else if changed, err := in.Reconcile(ctx); err != nil || changed {
				t.Errorf("second Reconcile changed=%v err=%v", changed, err)
			}
			if again := readDir(t, work); names(again) != names(want) {
				t.Errorf("second pass changed files: %s", names(again))
			}
		})
	}
}

// Install then uninstall gives back the original files as JSON values.
func TestRoundTrip(t *testing.T) {
	for _, dir := range []string{"conf-to-conflist", "conflist-append", "json-single", "already-present"} {
		t.Run(dir, func(t *testing.T) {
			ctx := context.Background()
			input := readDir(t, filepath.Join("testdata", dir, "in"))
			work := t.TempDir()
			writeDir(t, work, input)
			in := newInstaller(t, work)
			if _, err := in.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			if err := in.Uninstall(ctx); err != nil {
				t.Fatal(err)
			}
			got := readDir(t, work)
			if names(got) != names(input) {
				t.Fatalf("files after uninstall = %s, want %s", names(got), names(input))
			}
			for name, orig := range input {
				if dir == "already-present" {
					if hasEntry(got[name]) {
						t.Errorf("%s still has ambit-cni", name)
					}
					continue
				}
				if !equalJSON(got[name], orig) {
					t.Errorf("%s not restored:\n got %s\nwant %s", name, got[name], orig)
				}
			}
		})
	}
}

func TestNoPrimaryConfig(t *testing.T) {
	work := t.TempDir()
	writeDir(t, work, map[string][]byte{"00-broken.conflist": []byte("["), "notes.txt": []byte("{}")})
	_, err := newInstaller(t, work).Reconcile(context.Background())
	if !errors.Is(err, ErrNoPrimaryConfig) || !strings.Contains(err.Error(), work) {
		t.Errorf("err = %v, want ErrNoPrimaryConfig naming the dir", err)
	}
	_, err = newInstaller(t, filepath.Join(work, "absent")).Reconcile(context.Background())
	if !errors.Is(err, ErrNoPrimaryConfig) {
		t.Errorf("absent dir: err = %v", err)
	}
}

// A conversion never overwrites another plugin's .conflist of the same stem.
func TestConvertDoesNotClobber(t *testing.T) {
	work := t.TempDir()
	other := []byte(`{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"ptp"}]}`)
	writeDir(t, work, map[string][]byte{
		"10-a.conf":     []byte(`{"cniVersion":"1.0.0","name":"a","type":"bridge"}`),
		"10-a.conflist": other,
	})
	in := newInstaller(t, work)
	if _, err := in.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := readDir(t, work)
	if names(got) != "10-a-ambit.conflist,10-a.conflist" || !bytes.Equal(got["10-a.conflist"], other) || !hasEntry(got["10-a-ambit.conflist"]) {
		t.Fatalf("files %s: %s", names(got), got["10-a-ambit.conflist"])
	}
	if err := in.Uninstall(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := readDir(t, work); names(got) != "10-a.conf,10-a.conflist" {
		t.Errorf("after uninstall: %s", names(got))
	}
}

func TestInstallBinary(t *testing.T) {
	src := filepath.Join(t.TempDir(), "ambit-cni")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho v1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	in, err := New(Config{ConfDir: t.TempDir(), BinDir: bin, PluginBinary: src})
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(bin, PluginType)
	check := func(wantChanged bool, wantContent string) {
		t.Helper()
		changed, err := in.InstallBinary()
		if err != nil {
			t.Fatal(err)
		}
		if changed != wantChanged {
			t.Errorf("changed = %v, want %v", changed, wantChanged)
		}
		fi, err := os.Stat(dst)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("mode %v", fi.Mode())
		}
		if b, _ := os.ReadFile(dst); string(b) != wantContent {
			t.Errorf("content %q", b)
		}
		if files := readDir(t, bin); names(files) != PluginType {
			t.Errorf("bin dir holds %s", names(files))
		}
	}
	check(true, "#!/bin/sh\necho v1\n")
	check(false, "#!/bin/sh\necho v1\n")
	if err := os.WriteFile(dst, []byte("tampered"), 0o755); err != nil {
		t.Fatal(err)
	}
	check(true, "#!/bin/sh\necho v1\n")
	if err := os.Chmod(dst, 0o644); err != nil {
		t.Fatal(err)
	}
	check(true, "#!/bin/sh\necho v1\n")
	if err := in.RemoveBinary(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("binary still there: %v", err)
	}
}

func TestConfigFromEnv(t *testing.T) {
	env := map[string]string{EnvConfDir: "/host/etc/cni/net.d", EnvTimeout: "45s", EnvAgentSocket: "/run/a.sock"}
	c, err := ConfigFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.ConfDir != "/host/etc/cni/net.d" || c.BinDir != DefaultBinDir || c.Entry.Timeout != "45s" || c.Entry.AgentSocket != "/run/a.sock" {
		t.Errorf("config %+v", c)
	}
	env[EnvTimeout] = "never"
	if _, err := ConfigFromEnv(func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), EnvTimeout) {
		t.Errorf("bad timeout: err = %v", err)
	}
	env[EnvTimeout] = ""
	env[EnvBinDir] = "opt/cni/bin"
	if _, err := ConfigFromEnv(func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), EnvBinDir) {
		t.Errorf("relative dir: err = %v", err)
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRunWatches(t *testing.T) {
	conf, bin := t.TempDir(), t.TempDir()
	src := filepath.Join(t.TempDir(), "ambit-cni")
	if err := os.WriteFile(src, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	primary := filepath.Join(conf, "10-calico.conflist")
	original, err := os.ReadFile(filepath.Join("testdata", "conflist-append", "in", "10-calico.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(primary, original, 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := New(Config{ConfDir: conf, BinDir: bin, PluginBinary: src, Entry: goldenEntry, ResyncInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	fileHas := func(path string) func() bool {
		return func() bool { b, err := os.ReadFile(path); return err == nil && hasEntry(b) }
	}
	eventually(t, "initial install", fileHas(primary))
	eventually(t, "binary installed", func() bool { _, err := os.Stat(filepath.Join(bin, PluginType)); return err == nil })

	// Another CNI rewrites its config, dropping our entry.
	for i := range 3 {
		if err := os.WriteFile(primary, original, 0o644); err != nil {
			t.Fatal(err)
		}
		eventually(t, "entry re-inserted after rewrite "+string(rune('1'+i)), fileHas(primary))
	}

	// Someone deletes the binary.
	if err := os.Remove(filepath.Join(bin, PluginType)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "binary restored", func() bool { _, err := os.Stat(filepath.Join(bin, PluginType)); return err == nil })

	// A new primary .conf appears: it is converted and the old one cleaned.
	if err := os.WriteFile(filepath.Join(conf, "05-new.conf"), []byte(`{"cniVersion":"1.0.0","name":"new","type":"ptp"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, "new primary converted", fileHas(filepath.Join(conf, "05-new.conflist")))
	eventually(t, "old primary cleaned", func() bool {
		b, err := os.ReadFile(primary)
		return err == nil && !hasEntry(b) && equalJSON(b, original)
	})
	if _, err := os.Stat(filepath.Join(conf, "05-new.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("05-new.conf still present: %v", err)
	}
	// Steady state: nothing left to do, no temp files. A second Installer,
	// since Reconcile must not run concurrently with Run's.
	probe, err := New(Config{ConfDir: conf, BinDir: bin, PluginBinary: src, Entry: goldenEntry})
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := probe.Reconcile(ctx); err != nil || changed {
		t.Errorf("Reconcile after Run settled: changed=%v err=%v", changed, err)
	}
	if got := names(readDir(t, conf)); got != "05-new.conflist,10-calico.conflist" {
		t.Errorf("conf dir holds %s", got)
	}
}

// TestRestoreWithinASecond: the primary CNI rewrites its conflist without
// ambit-cni, in place or by rename as CNI plugins' installers do; Run puts
// the entry back within a second each time.
func TestRestoreWithinASecond(t *testing.T) {
	conf, bin := t.TempDir(), t.TempDir()
	primary := filepath.Join(conf, "10-calico.conflist")
	original, err := os.ReadFile(filepath.Join("testdata", "conflist-append", "in", "10-calico.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(primary, original, 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := New(Config{ConfDir: conf, BinDir: bin, Entry: goldenEntry, ResyncInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	restored := func() bool { b, err := os.ReadFile(primary); return err == nil && hasEntry(b) }
	eventually(t, "initial install", restored)
	var worst time.Duration
	for i := range 6 {
		start := time.Now()
		if i%2 == 0 {
			err = os.WriteFile(primary, original, 0o644)
		} else {
			tmp := filepath.Join(conf, ".calico-tmp")
			if err = os.WriteFile(tmp, original, 0o644); err == nil {
				err = os.Rename(tmp, primary)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		for !restored() {
			if time.Since(start) > time.Second {
				t.Fatalf("rewrite %d: ambit-cni not back in %s after a second", i+1, filepath.Base(primary))
			}
			time.Sleep(time.Millisecond)
		}
		worst = max(worst, time.Since(start))
	}
	t.Logf("conflist restored at most %v after a rewrite without ambit-cni (6 rewrites)", worst.Round(time.Microsecond))
}
