// Command ambit-images builds Ambit's container images into docker-archive
// tarballs (<out>/<name>.tar) without a container engine and prints each
// image's tag, digest and ID. `make images` runs it; see package images.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambit-mesh/ambit/deploy/images"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ambit-images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	epoch, err := images.EpochFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	cfg, err := images.ParseCLI(args, stderr)
	if err != nil {
		return err
	}
	cfg.Options.Epoch = epoch
	cfg.Options.Progress = stderr
	return images.BuildAll(ctx, cfg, stdout)
}
