package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"

	"github.com/ambit-mesh/ambit/pkg/localcluster"
)

func execIn(ctx context.Context, cp localcluster.Pod, bin string, args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return 0, fmt.Errorf("nsenter not found (Debian package util-linux): %w", err)
	}
	cmd := exec.CommandContext(ctx, nsenter, append([]string{"--net=" + cp.Netns, "--", bin}, args...)...)
	cmd.Env = append(os.Environ(), "POD_NAME="+cp.Name, "POD_NAMESPACE="+cp.Namespace)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("running %s in pod %s: %w", bin, cp.Key(), err)
	}
	return 0, nil
}
