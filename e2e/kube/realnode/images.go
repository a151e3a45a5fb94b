package realnode

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// PauseImage is the sandbox image every node uses: containerd's pinned
// sandbox image, imported by Start (built by BuildPauseImage unless
// Options.PauseImageTar is given). Pods never pull it.
const PauseImage = "ambit.local/pause:realnode"

// pausePkg is the sandbox process's source, built statically.
const pausePkg = "github.com/ambit-mesh/ambit/e2e/kube/realnode/internal/pause"

// ImageFile is one file of a test image: the host file at Src, at Path in
// the image (absolute), executable.
type ImageFile struct{ Src, Path string }

// WriteImage writes a single-layer linux/amd64 image holding files, run as
// entrypoint, tagged ref, as a tarball at tarPath that `ctr images import`
// reads. Timestamps are fixed, so the same input gives the same digest.
// It is the tests' stand-in for the Ambit image builder: binaries must be
// static (the image has no libc).
func WriteImage(tarPath, ref string, files []ImageFile, entrypoint []string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for _, f := range files {
		b, err := os.ReadFile(f.Src)
		if err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
		hdr := &tar.Header{
			Name: f.Path[1:], Mode: 0o755, Size: int64(len(b)),
			Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0),
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(b); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return fmt.Errorf("image %s layer: %w", ref, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint = entrypoint
	cf.Config.Env = []string{"PATH=/"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(tarPath), 0o755); err != nil {
		return err
	}
	if err := tarball.WriteToFile(tarPath, tag, img); err != nil {
		return fmt.Errorf("writing image %s to %s: %w", ref, tarPath, err)
	}
	return nil
}

// BuildStatic builds the Go package pkg with CGO off into dir and returns the
// binary's path (named after the package's last element).
func BuildStatic(ctx context.Context, dir, pkg string) (string, error) {
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

// BuildPauseImage builds the sandbox binary and writes PauseImage as a
// tarball in dir, returning its path.
func BuildPauseImage(ctx context.Context, dir string) (string, error) {
	bin, err := BuildStatic(ctx, dir, pausePkg)
	if err != nil {
		return "", err
	}
	tarPath := filepath.Join(dir, "pause.tar")
	return tarPath, WriteImage(tarPath, PauseImage, []ImageFile{{Src: bin, Path: "/pause"}}, []string{"/pause"})
}
