package images

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ambit-mesh/ambit/pkg/version"
)

// VersionVar is the variable the binaries' version is linked into.
const VersionVar = "github.com/ambit-mesh/ambit/pkg/version.Version"

// Source is the org.opencontainers.image.source label.
const Source = "https://" + Module

// ErrPending is wrapped by Build for a Spec with Pending set.
var ErrPending = errors.New("image pending")

// Options are the inputs a build shares across images.
type Options struct {
	// Version is linked into the binaries and labels the image; empty means
	// version.Dev.
	Version string
	// Epoch dates the layer's files, the config and the created label;
	// zero means the Unix epoch.
	Epoch time.Time
	// Arch is the GOARCH to build for; empty means runtime.GOARCH.
	Arch string
	// Go is the go command; empty means "go" from PATH.
	Go string
	// Dir is where go build runs, any directory inside the module (or a
	// module that requires it); empty means the current directory.
	Dir string
	// Progress receives one line per step; nil discards.
	Progress io.Writer
}

func (o Options) withDefaults() Options {
	if o.Version == "" {
		o.Version = version.Dev
	}
	if o.Epoch.IsZero() {
		o.Epoch = time.Unix(0, 0)
	}
	o.Epoch = o.Epoch.UTC()
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	if o.Go == "" {
		o.Go = "go"
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o
}

// EpochFromEnv returns SOURCE_DATE_EPOCH (seconds since the Unix epoch) as
// a time, or the zero time when it is unset.
func EpochFromEnv(getenv func(string) string) (time.Time, error) {
	v := strings.TrimSpace(getenv("SOURCE_DATE_EPOCH"))
	if v == "" {
		return time.Time{}, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: must be whole seconds since 1970-01-01 UTC (e.g. $(git log -1 --format=%%ct)), or unset", v)
	}
	return time.Unix(n, 0).UTC(), nil
}

// Builder builds images, compiling each package once. Its compiled
// binaries live in a temporary directory that Close removes. Safe for
// concurrent use.
type Builder struct {
	opts Options

	mu   sync.Mutex
	dir  string                  // lazily created work dir
	bins map[string]*compileOnce // by package
}

type compileOnce struct {
	once sync.Once
	path string
	err  error
}

// NewBuilder returns a Builder for opts.
func NewBuilder(opts Options) *Builder {
	return &Builder{opts: opts.withDefaults(), bins: map[string]*compileOnce{}}
}

// Options returns the builder's options with defaults filled in.
func (b *Builder) Options() Options { return b.opts }

// Close removes the compiled binaries.
func (b *Builder) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dir == "" {
		return nil
	}
	err := os.RemoveAll(b.dir)
	b.dir, b.bins = "", map[string]*compileOnce{}
	return err
}

// Build compiles spec's binaries with opts and returns the image.
func Build(ctx context.Context, spec Spec, opts Options) (v1.Image, error) {
	b := NewBuilder(opts)
	defer b.Close()
	return b.Build(ctx, spec)
}

// Build compiles spec's binaries (once per package per Builder) and returns
// the image. The image holds the layer in memory.
func (b *Builder) Build(ctx context.Context, spec Spec) (v1.Image, error) {
	if spec.Pending != "" {
		return nil, fmt.Errorf("image %s: %w: %s", spec.Name, ErrPending, spec.Pending)
	}
	if err := spec.validate(); err != nil {
		return nil, err
	}
	files := make([]layerFile, 0, len(spec.Binaries))
	for _, bin := range spec.Binaries {
		p, err := b.Compile(ctx, bin.Package)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", spec.Name, err)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", spec.Name, err)
		}
		files = append(files, layerFile{path: bin.Path, data: data, mode: 0o755})
	}
	for _, d := range spec.Dirs {
		files = append(files, layerFile{path: d.Path, dir: true, mode: d.Mode})
	}
	layerTar, err := buildLayer(files, b.opts.Epoch)
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", spec.Name, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", spec.Name, err)
	}
	return b.assemble(spec, layer)
}

func (b *Builder) assemble(spec Spec, layer v1.Layer) (v1.Image, error) {
	created := v1.Time{Time: b.opts.Epoch}
	cfg := &v1.ConfigFile{
		Architecture: b.opts.Arch,
		OS:           "linux",
		Created:      created,
		Config: v1.Config{
			User:       spec.User,
			Env:        append([]string(nil), spec.Env...),
			Entrypoint: []string{spec.Binaries[0].Path},
			Cmd:        append([]string(nil), spec.Cmd...),
			WorkingDir: "/",
			Labels:     Labels(spec, b.opts),
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", spec.Name, err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   created,
			CreatedBy: "ambit-images " + spec.Name,
			Comment:   "static binaries: " + binaryPaths(spec),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", spec.Name, err)
	}
	return img, nil
}

func binaryPaths(spec Spec) string {
	var ps []string
	for _, b := range spec.Binaries {
		ps = append(ps, b.Path)
	}
	return strings.Join(ps, " ")
}

// Labels returns the image's org.opencontainers.image.* labels.
func Labels(spec Spec, opts Options) map[string]string {
	opts = opts.withDefaults()
	return map[string]string{
		"org.opencontainers.image.title":       spec.Name,
		"org.opencontainers.image.description": spec.Description,
		"org.opencontainers.image.version":     opts.Version,
		"org.opencontainers.image.created":     opts.Epoch.Format(time.RFC3339),
		"org.opencontainers.image.source":      Source,
		"org.opencontainers.image.vendor":      "Ambit",
	}
}

// Compile builds pkg as a static linux binary (once per Builder) and
// returns its path, valid until Close.
func (b *Builder) Compile(ctx context.Context, pkg string) (string, error) {
	b.mu.Lock()
	c := b.bins[pkg]
	if c == nil {
		c = &compileOnce{}
		b.bins[pkg] = c
	}
	if b.dir == "" {
		dir, err := os.MkdirTemp("", "ambit-images-")
		if err != nil {
			b.mu.Unlock()
			return "", err
		}
		b.dir = dir
	}
	dir := b.dir
	b.mu.Unlock()
	c.once.Do(func() {
		out := filepath.Join(dir, strconv.Itoa(len(pkg))+"-"+path.Base(pkg)+"-"+shortHash(pkg))
		c.path, c.err = b.goBuild(ctx, pkg, out)
	})
	return c.path, c.err
}

// LDFlags returns the -ldflags value make build and Build link with.
func LDFlags(ver string) string {
	return "-s -w -buildid= -X " + VersionVar + "=" + ver
}

func (b *Builder) goBuild(ctx context.Context, pkg, out string) (string, error) {
	start := time.Now()
	fmt.Fprintf(b.opts.Progress, "compiling %s (GOARCH=%s, version %s)\n", pkg, b.opts.Arch, b.opts.Version)
	cmd := exec.CommandContext(ctx, b.opts.Go, "build", "-trimpath", "-buildvcs=false",
		"-ldflags="+LDFlags(b.opts.Version), "-o", out, pkg)
	cmd.Dir = b.opts.Dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+b.opts.Arch)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		return "", fmt.Errorf("go build %s failed (%v); run `CGO_ENABLED=0 go build %s` in the module to see why:\n%s", pkg, err, pkg, msg)
	}
	fmt.Fprintf(b.opts.Progress, "compiled %s in %s\n", pkg, time.Since(start).Round(100*time.Millisecond))
	return out, nil
}

func shortHash(s string) string {
	var h uint32 = 2166136261
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return strconv.FormatUint(uint64(h), 36)
}

// layerFile is one entry of a layer: a regular file or a directory.
type layerFile struct {
	path string
	dir  bool
	data []byte
	mode fs.FileMode
}

// buildLayer returns an uncompressed tar of files plus their parent
// directories (0755), sorted by path, owned by 0:0, dated epoch.
func buildLayer(files []layerFile, epoch time.Time) ([]byte, error) {
	entries := map[string]layerFile{}
	for _, f := range files {
		if _, dup := entries[f.path]; dup {
			return nil, fmt.Errorf("%s listed twice", f.path)
		}
		entries[f.path] = f
	}
	for _, f := range files {
		for d := path.Dir(f.path); d != "/"; d = path.Dir(d) {
			if e, ok := entries[d]; ok {
				if !e.dir {
					return nil, fmt.Errorf("%s is a file and the parent of %s", d, f.path)
				}
				continue
			}
			entries[d] = layerFile{path: d, dir: true, mode: 0o755}
		}
	}
	names := make([]string, 0, len(entries))
	for p := range entries {
		names = append(names, p)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range names {
		f := entries[p]
		h := &tar.Header{
			Name:    strings.TrimPrefix(p, "/"),
			Mode:    tarMode(f.mode),
			ModTime: epoch,
		}
		if f.dir {
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// tarMode converts fs mode bits to the tar header's c_ISUID etc. bits.
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}
