package images

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestParseCLI(t *testing.T) {
	c, err := ParseCLI([]string{"-only", "pause, istiod", "-hub", "example.test/mesh", "-version", "1.2.3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := specNames(c.Specs); strings.Join(got, ",") != "pause,istiod" || c.Hub != "example.test/mesh" || c.Options.Version != "1.2.3" || c.Out != "bin/images" {
		t.Errorf("parsed %+v (specs %v)", c, got)
	}
	c, err = ParseCLI(nil, io.Discard)
	if err != nil || len(c.Specs) != len(Specs()) || c.Hub != DefaultHub {
		t.Errorf("defaults: %+v, %v; want every spec and hub %s", c, err, DefaultHub)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-only", "istiod,nope"}, `-only: unknown image "nope": use one of [istiod ztunnel cni-agent ambitctl waypoint pause]`},
		{[]string{"pause"}, `unexpected argument "pause": use -only pause to pick images`},
		{[]string{"-out", ""}, "-out must not be empty"},
	} {
		_, err := ParseCLI(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseCLI(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
	if _, err := ParseCLI([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
}

// BuildAll writes a tarball per image, prints tag, digest and ID, and
// skips a pending image with its reason.
func TestBuildAll(t *testing.T) {
	out := t.TempDir()
	var stdout, progress strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := BuildAll(ctx, CLI{Out: out, Hub: "example.test/mesh", Specs: []Spec{Waypoint, Pause}, Options: Options{Progress: &progress}}, &stdout)
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`^waypoint   skipped: no waypoint binary yet \(expected at github.com/ambit-mesh/ambit/waypoint/cmd/waypoint\)
pause      example.test/mesh/pause:0\.1\.0-dev sha256:[0-9a-f]{64} id=sha256:[0-9a-f]{64} size=\d+\.\dMB ` + regexp.QuoteMeta(filepath.Join(out, "pause.tar")) + "\n$")
	if !want.MatchString(stdout.String()) {
		t.Errorf("output:\n%s\nwant it to match %s", stdout.String(), want)
	}
	if !strings.Contains(progress.String(), "compiling "+Pause.Binaries[0].Package) {
		t.Errorf("progress %q names no compile step", progress.String())
	}
	if _, err := os.Stat(filepath.Join(out, "pause.tar")); err != nil {
		t.Error(err)
	}
	err = BuildAll(ctx, CLI{Out: out, Specs: []Spec{Waypoint}}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "pending") {
		t.Errorf("only pending images: %v, want an error", err)
	}
	_, err = Build(ctx, Waypoint, Options{})
	if !errors.Is(err, ErrPending) {
		t.Errorf("Build(Waypoint) = %v, want ErrPending", err)
	}
}

func TestSpecValidation(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Name: "x"}, "image x: Binaries is empty"},
		{Spec{Name: "x", Binaries: []Binary{{Package: "p", Path: "bin/x"}}}, `image x: binary Path "bin/x" must be a clean absolute path`},
		{Spec{Name: "x", Binaries: []Binary{{Package: "p", Path: "/x"}}, Dirs: []Dir{{Path: "/x"}}}, `image x: Dir Path "/x" appears twice`},
		{Spec{Name: "x", Binaries: []Binary{{Path: "/x"}}}, `image x: binary "/x" has no Package`},
	} {
		if err := tc.spec.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.spec, err, tc.want)
		}
	}
	for _, s := range Specs() {
		if s.Pending != "" {
			continue
		}
		if err := s.validate(); err != nil {
			t.Error(err)
		}
	}
	// A binary under a path that is also a file.
	_, err := buildLayer([]layerFile{{path: "/a", data: []byte("x")}, {path: "/a/b", data: []byte("y")}}, time.Unix(0, 0))
	if err == nil || !strings.Contains(err.Error(), "/a is a file and the parent of /a/b") {
		t.Errorf("file as parent: %v", err)
	}
}

func TestEpochFromEnv(t *testing.T) {
	env := func(v string) func(string) string { return func(string) string { return v } }
	if e, err := EpochFromEnv(env("")); err != nil || !e.IsZero() {
		t.Errorf("unset: %v, %v", e, err)
	}
	if e, err := EpochFromEnv(env("1700000000")); err != nil || e.Unix() != 1700000000 {
		t.Errorf("1700000000: %v, %v", e, err)
	}
	if _, err := EpochFromEnv(env("yesterday")); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Errorf("yesterday: %v", err)
	}
}

func TestTag(t *testing.T) {
	if got := Tag("", "istiod", "1.0.0"); got != "localhost/ambit/istiod:1.0.0" {
		t.Errorf("Tag = %s", got)
	}
	if got := Tag("registry.example/team/", "pause", "1"); got != "registry.example/team/pause:1" {
		t.Errorf("Tag = %s", got)
	}
	if err := WriteTarball(filepath.Join(t.TempDir(), "x.tar"), "Bad Tag", nil); err == nil || !strings.Contains(err.Error(), `tag "Bad Tag"`) {
		t.Errorf("bad tag: %v", err)
	}
}
