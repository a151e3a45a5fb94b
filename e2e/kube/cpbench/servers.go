package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/pilot"
)

// server is a control plane under test, running as a child process.
type server struct {
	Name       string
	PID        int
	Addr       string // TLS xDS host:port
	ServerName string // in its serving certificate
	RootCAFile string
	Started    time.Time // just before the process was started
	Ready      time.Time // when its readiness endpoint first answered 200
	tail       func() string
	exited     func() bool
	stop       func() error
}

// Ambit istiod's readiness (/ready after the first push, which waits for
// every informer) can take a while with many objects on loaded cores.
const ambitReadyTimeout = 5 * time.Minute

// startAmbit runs Ambit's istiod binary against c: config from the API
// server, callers authenticated by TokenReview (the ztunnel service
// account's tokens), serving on loopback ports chosen here.
func startAmbit(ctx context.Context, c *cluster.Cluster, bin string) (*server, error) {
	dir, err := os.MkdirTemp("", "ambit-cpbench-istiod-")
	if err != nil {
		return nil, err
	}
	ports, err := cluster.FreePorts(2)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	grpcAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	readyAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	root := filepath.Join(dir, "root-cert.pem")
	logPath := filepath.Join(dir, "istiod.log")
	logf, err := os.Create(logPath)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	args := []string{
		"--config-source", "kubernetes", "--kubeconfig", c.Kubeconfig,
		"--state-dir", filepath.Join(dir, "state"),
		"--grpc-addr", grpcAddr, "--readiness-addr", readyAddr,
		"--root-cert-out", root,
		"--ztunnel-sa", ztunnelNS + "/" + ztunnelSA,
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	s := &server{Name: "ambit", Addr: grpcAddr, ServerName: "istiod.istio-system.svc", RootCAFile: root}
	s.Started = time.Now()
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	s.PID = cmd.Process.Pid
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.exited = func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
	s.tail = func() string { return tailFile(logPath, 30) }
	var once sync.Once
	s.stop = func() error {
		once.Do(func() {
			_ = syscall.Kill(-s.PID, syscall.SIGKILL)
			<-done
			_ = logf.Close()
			if os.Getenv(cluster.EnvKeep) == "1" {
				return
			}
			_ = os.RemoveAll(dir)
		})
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, ambitReadyTimeout)
	defer cancel()
	if err := waitHTTP(rctx, "http://"+readyAddr+"/ready", done); err != nil {
		tail := s.tail()
		_ = s.stop()
		return nil, fmt.Errorf("ambit istiod did not become ready: %w\n--- tail of its log ---\n%s", err, tail)
	}
	s.Ready = time.Now()
	return s, nil
}

// startPilot runs pilot-discovery (e2e/kube/pilot) against c and writes its
// root certificate where the clients read it.
func startPilot(ctx context.Context, c *cluster.Cluster, bin string, progress io.Writer) (*server, error) {
	s := &server{Name: "pilot", ServerName: pilot.ServerName}
	s.Started = time.Now()
	p, err := pilot.Start(ctx, c, pilot.Options{Binary: bin, Progress: progress})
	if err != nil {
		return nil, err
	}
	s.Ready = time.Now()
	s.PID, s.Addr = p.PID(), p.SecureGRPCAddr
	s.tail = func() string { return p.Tail(30) }
	s.exited = p.Exited
	dir, err := os.MkdirTemp("", "ambit-cpbench-pilot-")
	if err != nil {
		_ = p.Stop()
		return nil, err
	}
	s.stop = func() error {
		err := p.Stop()
		_ = os.RemoveAll(dir)
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	pem, err := p.RootCert(rctx, pilot.Namespace)
	if err == nil {
		s.RootCAFile = filepath.Join(dir, "root-cert.pem")
		err = os.WriteFile(s.RootCAFile, pem, 0o644)
	}
	if err != nil {
		_ = s.stop()
		return nil, fmt.Errorf("pilot-discovery's root certificate: %w", err)
	}
	return s, nil
}

func waitHTTP(ctx context.Context, url string, exited <-chan struct{}) error {
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", url, ctx.Err(), last)
		case <-exited:
			return errors.New("the process exited")
		case <-tick.C:
		}
	}
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// procStat is a process's CPU time (user + system) and memory, read from
// /proc.
type procStat struct {
	CPU      time.Duration
	RSS, HWM int64 // bytes: VmRSS now and VmHWM (peak)
}

// clockTick is USER_HZ, 100 on every Linux architecture Go supports.
const clockTick = 100

func readProc(pid int) (procStat, error) {
	var ps procStat
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ps, err
	}
	// Fields after the command (which may hold spaces) in parentheses:
	// state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ps, fmt.Errorf("/proc/%d/stat: no command", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return ps, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return ps, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	ps.CPU = time.Duration(ut+st) * time.Second / clockTick
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return ps, fmt.Errorf("/proc/%d/status %s: %w", pid, k, err)
		}
		if k == "VmRSS" {
			ps.RSS = kb << 10
		} else {
			ps.HWM = kb << 10
		}
	}
	return ps, nil
}
