package images

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/ambit-mesh/ambit/cni/install"
	"github.com/ambit-mesh/ambit/pkg/version"
)

// shared compiles each package once for every test in this package.
var shared = struct {
	once sync.Once
	b    *Builder
	mu   sync.Mutex
	imgs map[string]v1.Image
}{imgs: map[string]v1.Image{}}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.b != nil {
		shared.b.Close()
	}
	os.Exit(code)
}

func sharedBuilder() *Builder {
	shared.once.Do(func() { shared.b = NewBuilder(Options{}) })
	return shared.b
}

// sharedImage builds spec once with default options.
func sharedImage(t *testing.T, spec Spec) v1.Image {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if img, ok := shared.imgs[spec.Name]; ok {
		return img
	}
	img := build(t, sharedBuilder(), spec)
	shared.imgs[spec.Name] = img
	return img
}

func build(t *testing.T, b *Builder, spec Spec) v1.Image {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	img, err := b.Build(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	t.Logf("built %s (version %s) in %s: %s", spec.Name, b.Options().Version, time.Since(start).Round(time.Millisecond), d)
	return img
}

// writeTarball writes img into a new temp dir and returns the path and the
// file's sha256.
func writeTarball(t *testing.T, spec Spec, ver string, img v1.Image) (string, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), spec.Name+".tar")
	if err := WriteTarball(p, Tag("", spec.Name, ver), img); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, fmt.Sprintf("%x", sha256.Sum256(data))
}

// The same input gives the same digest and tarball bytes, built from
// separate compiles; another version gives another digest and binary.
func TestReproducible(t *testing.T) {
	for _, spec := range []Spec{Pause, CNIAgent} {
		t.Run(spec.Name, func(t *testing.T) {
			first := sharedImage(t, spec)
			again := NewBuilder(Options{})
			defer again.Close()
			second := build(t, again, spec)
			d1, d2 := digest(t, first), digest(t, second)
			if d1 != d2 {
				t.Errorf("two builds of the same input: digests %s and %s differ", d1, d2)
			}
			_, sum1 := writeTarball(t, spec, version.Dev, first)
			_, sum2 := writeTarball(t, spec, version.Dev, second)
			if sum1 != sum2 {
				t.Errorf("two builds of the same input: tarball sha256 %s and %s differ", sum1, sum2)
			}
			s, err := Summarize(Tag("", spec.Name, version.Dev), first)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s %s id=%s layers=%d bytes tarball sha256=%s", s.Tag, s.Digest, s.ID, s.Size, sum1)
		})
	}
	t.Run("version", func(t *testing.T) {
		other := NewBuilder(Options{Version: "9.9.9-test"})
		defer other.Close()
		img := build(t, other, Pause)
		base := sharedImage(t, Pause)
		if digest(t, img) == digest(t, base) {
			t.Errorf("version 9.9.9-test and %s: same digest %s", version.Dev, digest(t, img))
		}
		if diffIDs(t, img)[0] == diffIDs(t, base)[0] {
			t.Errorf("version 9.9.9-test and %s: same layer %s: the version is not linked into the binary", version.Dev, diffIDs(t, img)[0])
		}
	})
	t.Run("epoch", func(t *testing.T) {
		epoch := time.Unix(1700000000, 0)
		other := NewBuilder(Options{Epoch: epoch})
		defer other.Close()
		img := build(t, other, Pause)
		if digest(t, img) == digest(t, sharedImage(t, Pause)) {
			t.Errorf("epoch %v and the Unix epoch: same digest", epoch)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if !cf.Created.Time.Equal(epoch) || cf.Config.Labels["org.opencontainers.image.created"] != "2023-11-14T22:13:20Z" {
			t.Errorf("created %v, label %q: want %v", cf.Created, cf.Config.Labels["org.opencontainers.image.created"], epoch.UTC())
		}
	})
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func diffIDs(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cf.RootFS.DiffIDs
}

// An image read back from its tarball has the spec's config, labels and
// files, and its binaries are static and run.
func TestContents(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		// files is the layer's listing: type, mode, uid:gid, mtime, path.
		files []string
		// run checks each extracted binary, by image path.
		run map[string]func(t *testing.T, root, bin string)
	}{{
		spec: Pause,
		files: []string{
			"f 0755 0:0 0 pause",
		},
		run: map[string]func(*testing.T, string, string){
			"/pause": func(t *testing.T, _, bin string) {
				out, err := exec.Command(bin, "-v").CombinedOutput()
				if err != nil || string(out) != "pause "+version.Dev+"\n" {
					t.Errorf("pause -v: %v, output %q; want %q", err, out, "pause "+version.Dev+"\n")
				}
			},
		},
	}, {
		spec: CNIAgent,
		files: []string{
			"d 0755 0:0 0 opt/",
			"d 0755 0:0 0 opt/ambit/",
			"d 0755 0:0 0 opt/ambit/bin/",
			"f 0755 0:0 0 opt/ambit/bin/ambit-cni",
			"f 0755 0:0 0 opt/ambit/bin/cni-agent",
			"d 1777 0:0 0 tmp/",
		},
		run: map[string]func(*testing.T, string, string){
			"/opt/ambit/bin/cni-agent": func(t *testing.T, root, bin string) {
				out, err := exec.Command(bin, "-h").CombinedOutput()
				if err != nil {
					t.Fatalf("cni-agent -h: %v\n%s", err, out)
				}
				// The agent's default plugin binary (next to it) is the
				// one in the image, where the installer looks too.
				want := filepath.Join(root, install.DefaultPluginBinary)
				if !strings.Contains(string(out), `(default "`+want+`")`) {
					t.Errorf("cni-agent -h does not show --plugin-binary default %q:\n%s", want, out)
				}
			},
			"/opt/ambit/bin/ambit-cni": func(t *testing.T, _, bin string) {
				cmd := exec.Command(bin)
				cmd.Env = []string{}
				out, err := cmd.CombinedOutput()
				if err != nil || !strings.Contains(string(out), "CNI protocol versions supported") {
					t.Errorf("ambit-cni without CNI_COMMAND: %v, output %q; want its about text", err, out)
				}
			},
		},
	}} {
		t.Run(tc.spec.Name, func(t *testing.T) {
			built := sharedImage(t, tc.spec)
			tag := Tag("", tc.spec.Name, version.Dev)
			p, _ := writeTarball(t, tc.spec, version.Dev, built)
			ref, err := name.NewTag(tag)
			if err != nil {
				t.Fatal(err)
			}
			img, err := tarball.ImageFromPath(p, &ref)
			if err != nil {
				t.Fatalf("reading %s back as %s: %v", p, tag, err)
			}
			if id, want := configName(t, img), configName(t, built); id != want {
				t.Errorf("image ID read back %s, built %s", id, want)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			wantCfg := v1.Config{
				User:       tc.spec.User,
				Env:        tc.spec.Env,
				Entrypoint: []string{tc.spec.Binaries[0].Path},
				WorkingDir: "/",
				Labels: map[string]string{
					"org.opencontainers.image.title":       tc.spec.Name,
					"org.opencontainers.image.description": tc.spec.Description,
					"org.opencontainers.image.version":     version.Dev,
					"org.opencontainers.image.created":     "1970-01-01T00:00:00Z",
					"org.opencontainers.image.source":      "https://github.com/ambit-mesh/ambit",
					"org.opencontainers.image.vendor":      "Ambit",
				},
			}
			if diff := cmp.Diff(wantCfg, cf.Config); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
			if cf.OS != "linux" || cf.Created.Unix() != 0 || len(cf.History) != 1 || cf.History[0].Created.Unix() != 0 {
				t.Errorf("os %q created %v history %+v: want linux, the epoch, one entry at the epoch", cf.OS, cf.Created, cf.History)
			}
			root := t.TempDir()
			got := extract(t, img, root)
			if diff := cmp.Diff(tc.files, got); diff != "" {
				t.Errorf("layer files (-want +got):\n%s", diff)
			}
			for _, b := range tc.spec.Binaries {
				bin := filepath.Join(root, b.Path)
				assertStatic(t, bin)
				run := tc.run[b.Path]
				if run == nil {
					t.Fatalf("no run check for %s", b.Path)
				}
				t.Run(filepath.Base(b.Path), func(t *testing.T) { run(t, root, bin) })
			}
		})
	}
}

func configName(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// extract writes img's single layer under root and returns its listing.
func extract(t *testing.T, img v1.Image, root string) []string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var list []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		kind := map[byte]string{tar.TypeDir: "d", tar.TypeReg: "f"}[h.Typeflag]
		if kind == "" {
			kind = fmt.Sprintf("type%q", h.Typeflag)
		}
		list = append(list, fmt.Sprintf("%s %04o %d:%d %d %s", kind, h.Mode, h.Uid, h.Gid, h.ModTime.Unix(), h.Name))
		dst := filepath.Join(root, filepath.FromSlash(h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, data, os.FileMode(h.Mode).Perm()); err != nil {
				t.Fatal(err)
			}
		}
	}
	return list
}

// assertStatic fails unless bin is a static ELF executable: no program
// interpreter and no dynamic section.
func assertStatic(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has %v: not a static binary", bin, p.Type)
		}
	}
	if out, err := exec.Command("go", "tool", "buildid", bin).Output(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("go tool buildid %s: %q, %v; want an empty build ID", bin, out, err)
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
		if strings.HasPrefix(s.Key, "vcs") {
			t.Errorf("%s carries VCS stamp %s=%s", bin, s.Key, s.Value)
		}
	}
	// (-trimpath leaves -ldflags out of the settings; pause -v checks the version.)
	if settings["-trimpath"] != "true" || settings["CGO_ENABLED"] != "0" {
		t.Errorf("%s build settings %v: want -trimpath=true and CGO_ENABLED=0", bin, settings)
	}
	if f.Section(".symtab") != nil || f.Section(".debug_info") != nil {
		t.Errorf("%s has a symbol table or DWARF: not stripped", bin)
	}
}

// The Makefile's default VERSION is pkg/version.Dev.
func TestMakefileVersion(t *testing.T) {
	data, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^VERSION\s*\?=\s*(\S+)\s*$`).FindSubmatch(data)
	if m == nil {
		t.Fatal("Makefile has no `VERSION ?= <v>` line")
	}
	if string(m[1]) != version.Dev {
		t.Errorf("Makefile VERSION ?= %s but pkg/version.Dev is %s: make them agree", m[1], version.Dev)
	}
}
