package images

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// DefaultHub is the registry and path the images are tagged under unless a
// hub is given: a placeholder with no registry behind it, for images that
// are imported from their tarballs. Users set their own (make images HUB=…,
// the chart's image repository values).
const DefaultHub = "localhost/ambit"

// Tag returns "<hub>/<name>:<version>", hub DefaultHub when empty.
func Tag(hub, name, version string) string {
	if hub == "" {
		hub = DefaultHub
	}
	return strings.TrimSuffix(hub, "/") + "/" + name + ":" + version
}

// WriteTarball writes img to path as a docker-archive tarball (manifest.json
// with the tag in RepoTags) that `docker load` and
// `ctr -n k8s.io images import` accept. The file is replaced atomically; the
// same image and tag give the same bytes.
func WriteTarball(path, tag string, img v1.Image) error {
	ref, err := name.NewTag(tag, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("tag %q: %w; use <registry>/<path>:<version>, e.g. %s", tag, err, Tag("", "istiod", "0.1.0"))
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := tarball.Write(ref, img, f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// Summary is what the CLI prints for an image.
type Summary struct {
	Tag string
	// Digest is the manifest digest; ID is the config digest, the image
	// ID a container runtime shows after importing the tarball.
	Digest, ID v1.Hash
	// Size is the compressed layers' total size in bytes.
	Size int64
}

// Summarize returns img's digests and size under tag.
func Summarize(tag string, img v1.Image) (Summary, error) {
	s := Summary{Tag: tag}
	var err error
	if s.Digest, err = img.Digest(); err != nil {
		return s, err
	}
	if s.ID, err = img.ConfigName(); err != nil {
		return s, err
	}
	layers, err := img.Layers()
	if err != nil {
		return s, err
	}
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return s, err
		}
		s.Size += n
	}
	return s, nil
}
