package images

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pauseBinary compiles the pause command (once for the package's tests).
func pauseBinary(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin, err := sharedBuilder().Compile(ctx, Pause.Binaries[0].Package)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// pollUntil calls cond until it returns true or the deadline passes.
func pollUntil(t *testing.T, what string, deadline time.Duration, cond func() (bool, error)) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		ok, err := cond()
		if ok {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s: not within %s (last error: %v)", what, deadline, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// catches reports whether pid has a handler installed for sig
// (/proc/<pid>/status SigCgt).
func catches(pid int, sig syscall.Signal) (bool, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "SigCgt:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return false, err
			}
			return mask&(1<<(uint(sig)-1)) != 0, nil
		}
	}
	return false, errors.New("no SigCgt line")
}

// waitExit waits for cmd up to deadline and returns its exit code.
func waitExit(t *testing.T, cmd *exec.Cmd, deadline time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				t.Fatalf("pause died of %v instead of exiting", ws.Signal())
			}
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(deadline):
		cmd.Process.Kill()
		<-done
		t.Fatalf("pause did not exit within %s", deadline)
		return -1
	}
}

// pause exits 0 on SIGTERM and on SIGINT and keeps running until then.
func TestPauseSignals(t *testing.T) {
	bin := pauseBinary(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(bin)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			pid := cmd.Process.Pid
			pollUntil(t, "pause handles "+sig.String(), 5*time.Second, func() (bool, error) { return catches(pid, sig) })
			// It is still running once its handlers are in place.
			if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
				t.Fatalf("pause exited before the signal: %v; stderr %q", err, stderr.String())
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if code := waitExit(t, cmd, 5*time.Second); code != 0 {
				t.Errorf("pause exited %d on %v, want 0; stderr %q", code, sig, stderr.String())
			}
		})
	}
}

// As a PID namespace's init, pause reaps the orphans reparented to it.
// Root: it creates a PID namespace.
func TestPauseReapsOrphans(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (a PID namespace) and CI=true: run the tests as root")
		}
		t.Skip("needs root to create a PID namespace")
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		t.Fatalf("nsenter (util-linux) not found: %v; install util-linux", err)
	}
	bin := pauseBinary(t)
	cmd := exec.Command(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if code := waitExit(t, cmd, 5*time.Second); code != 0 {
			t.Errorf("pause exited %d on SIGTERM, want 0", code)
		}
	}()
	pollUntil(t, "pause handles SIGCHLD", 5*time.Second, func() (bool, error) { return catches(pid, syscall.SIGCHLD) })
	children := func() (string, error) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		return strings.TrimSpace(string(b)), err
	}
	// A shell in pause's PID namespace starts a 2s sleep and exits: the
	// sleep is reparented to pause, exits, and must not stay a zombie.
	out, err := exec.Command(nsenter, "--target", strconv.Itoa(pid), "--pid", "--", "/bin/sh", "-c", "sleep 2 >/dev/null 2>&1 & exit 0").CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v\n%s", err, out)
	}
	pollUntil(t, "the orphan is reparented to pause", 5*time.Second, func() (bool, error) {
		c, err := children()
		return c != "", err
	})
	pollUntil(t, "pause reaps the orphan", 5*time.Second, func() (bool, error) {
		c, err := children()
		return c == "", err
	})
}
