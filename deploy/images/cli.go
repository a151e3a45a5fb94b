package images

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"
)

// CLI is the configuration of cmd/ambit-images.
type CLI struct {
	// Out is the directory the tarballs are written to.
	Out string
	// Hub is the tags' registry and path.
	Hub string
	// Specs are the images to build, in order.
	Specs   []Spec
	Options Options
}

// ParseCLI parses ambit-images' flags; flag.ErrHelp for -h.
func ParseCLI(args []string, usage io.Writer) (CLI, error) {
	fs := flag.NewFlagSet("ambit-images", flag.ContinueOnError)
	fs.SetOutput(usage)
	var c CLI
	var only string
	fs.StringVar(&c.Out, "out", "bin/images", "directory for the <name>.tar tarballs")
	fs.StringVar(&c.Hub, "hub", DefaultHub, "registry and path of the tags <hub>/<name>:<version>")
	fs.StringVar(&c.Options.Version, "version", "", "version linked into the binaries and tagged (default the Makefile's VERSION via make, else pkg/version.Dev)")
	fs.StringVar(&c.Options.Arch, "arch", "", "GOARCH to build for (default this machine's)")
	fs.StringVar(&only, "only", "", "comma-separated image names to build (default all: "+strings.Join(specNames(Specs()), ",")+")")
	fs.Usage = func() {
		fmt.Fprintln(usage, "usage: ambit-images [flags]: build Ambit's images as docker-archive tarballs (SOURCE_DATE_EPOCH dates them)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return CLI{}, err
	}
	if fs.NArg() > 0 {
		return CLI{}, fmt.Errorf("unexpected argument %q: use -only %s to pick images", fs.Arg(0), fs.Arg(0))
	}
	if c.Out == "" {
		return CLI{}, errors.New("-out must not be empty: give the directory for the tarballs")
	}
	if only == "" {
		c.Specs = Specs()
		return c, nil
	}
	for _, n := range strings.Split(only, ",") {
		s, err := Lookup(strings.TrimSpace(n))
		if err != nil {
			return CLI{}, fmt.Errorf("-only: %w", err)
		}
		c.Specs = append(c.Specs, s)
	}
	return c, nil
}

func specNames(specs []Spec) []string {
	var ns []string
	for _, s := range specs {
		ns = append(ns, s.Name)
	}
	return ns
}

// BuildAll builds c.Specs into c.Out, writing progress to
// c.Options.Progress and one line per image to out:
//
//	<name> <tag> <digest> id=<config digest> size=<MB> <file>
//
// or "<name> skipped: <reason>" for a pending spec.
func BuildAll(ctx context.Context, c CLI, out io.Writer) error {
	b := NewBuilder(c.Options)
	defer b.Close()
	opts := b.Options()
	var built int
	for _, s := range c.Specs {
		if s.Pending != "" {
			fmt.Fprintf(out, "%-10s skipped: %s\n", s.Name, s.Pending)
			continue
		}
		start := time.Now()
		fmt.Fprintf(opts.Progress, "image %s: building\n", s.Name)
		img, err := b.Build(ctx, s)
		if err != nil {
			return err
		}
		tag := Tag(c.Hub, s.Name, opts.Version)
		path := filepath.Join(c.Out, s.Name+".tar")
		if err := WriteTarball(path, tag, img); err != nil {
			return fmt.Errorf("image %s: %w (is -out %s writable?)", s.Name, err, c.Out)
		}
		sum, err := Summarize(tag, img)
		if err != nil {
			return fmt.Errorf("image %s: %w", s.Name, err)
		}
		fmt.Fprintf(opts.Progress, "image %s: written to %s in %s\n", s.Name, path, time.Since(start).Round(100*time.Millisecond))
		fmt.Fprintf(out, "%-10s %s %s id=%s size=%.1fMB %s\n", s.Name, sum.Tag, sum.Digest, sum.ID, float64(sum.Size)/1e6, path)
		built++
	}
	if built == 0 {
		return errors.New("no image built: every selected image is pending")
	}
	return nil
}
