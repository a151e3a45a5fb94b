package realnode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/ambit-mesh/ambit/deploy/images"
)

// PauseImage is the sandbox image a node uses unless Options.PauseImage
// says otherwise: containerd's pinned sandbox image, imported by Start
// (built by BuildPauseImage from deploy/images' Pause spec unless
// Options.PauseImageTar is given). Pods never pull it.
var PauseImage = images.Tag("", images.Pause.Name, "realnode")

// sourceDir is a directory inside the module, where go build runs for the
// images (the caller's working directory when this file's path is unknown).
func sourceDir() string {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		if _, err := os.Stat(file); err == nil {
			return filepath.Dir(file)
		}
	}
	return ""
}

// BuildImage builds spec with deploy/images (static binaries on an empty
// base) and writes it, tagged tag, as a tarball at path that ImportImage
// reads.
func BuildImage(ctx context.Context, spec images.Spec, tag, path string) error {
	img, err := images.Build(ctx, spec, images.Options{Dir: sourceDir()})
	if err != nil {
		return fmt.Errorf("building image %s: %w", spec.Name, err)
	}
	if err := images.WriteTarball(path, tag, img); err != nil {
		return fmt.Errorf("writing image %s: %w", tag, err)
	}
	return nil
}

// BuildPauseImage builds deploy/images' Pause spec as PauseImage into a
// tarball in dir and returns its path.
func BuildPauseImage(ctx context.Context, dir string) (string, error) {
	path := filepath.Join(dir, "pause.tar")
	return path, BuildImage(ctx, images.Pause, PauseImage, path)
}
