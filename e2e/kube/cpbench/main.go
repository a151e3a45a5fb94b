package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/e2e/kube/pilot"
)

// config is the run's shape (flags).
type config struct {
	pods, services, clients, changes, nodes, namespaces int
	qps, workers                                        int
	servers                                             []string
	istiod, pilotBin                                    string
	window                                              int
	syncTimeout, changeTimeout, settleTimeout           time.Duration
	timeout                                             time.Duration
}

func parseFlags(args []string, errw io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("cpbench", flag.ContinueOnError)
	fs.SetOutput(errw)
	fs.IntVar(&c.pods, "pods", 10000, "pods (N), each a workload Address")
	fs.IntVar(&c.services, "services", 1000, "services (S), each an Address, selecting the pods")
	fs.IntVar(&c.clients, "clients", 100, "simulated ztunnel delta ADS clients (M), in one separate process")
	fs.IntVar(&c.changes, "changes", 20, "changes (C) through the API server: a pod label, then a policy create, update, delete, in turn")
	fs.IntVar(&c.nodes, "nodes", 50, "simulated nodes (K, Node objects) the pods are spread over")
	fs.IntVar(&c.namespaces, "namespaces", 10, "namespaces (labelled ambient) the pods and services are spread over")
	fs.IntVar(&c.qps, "qps", 400, "API writes per second while creating objects")
	fs.IntVar(&c.workers, "workers", 16, "concurrent API writers while creating objects")
	servers := fs.String("servers", "ambit,pilot", "servers to measure, one after the other: ambit, pilot")
	fs.StringVar(&c.istiod, "istiod", "", "Ambit istiod binary (built from ./istiod/cmd/istiod when empty)")
	fs.StringVar(&c.pilotBin, "pilot", "", "pilot-discovery binary (e2e/kube/pilot's cached build when empty)")
	fs.IntVar(&c.window, "window", 4<<20, "clients' HTTP/2 stream and connection windows, bytes")
	fs.DurationVar(&c.syncTimeout, "sync-timeout", 5*time.Minute, "give up waiting for the clients' initial sync after this long")
	fs.DurationVar(&c.changeTimeout, "change-timeout", 30*time.Second, "give up waiting for one change after this long")
	fs.DurationVar(&c.settleTimeout, "settle-timeout", 10*time.Minute, "give up waiting for the EndpointSlices after this long")
	fs.DurationVar(&c.timeout, "timeout", 60*time.Minute, "give up the whole run after this long")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, s := range strings.Split(*servers, ",") {
		switch s = strings.TrimSpace(s); s {
		case "ambit", "pilot":
			c.servers = append(c.servers, s)
		case "":
		default:
			return c, fmt.Errorf("-servers: unknown server %q (ambit, pilot)", s)
		}
	}
	switch {
	case c.pods < 1 || c.services < 1 || c.clients < 1 || c.changes < 0 || c.nodes < 1 || c.namespaces < 1:
		return c, errors.New("-pods, -services, -clients, -nodes and -namespaces must be at least 1, -changes at least 0")
	case c.pods > 500000:
		return c, errors.New("-pods: at most 500000 (pod IPs come from 10.200.0.0/13)")
	case c.qps < 1 || c.workers < 1:
		return c, errors.New("-qps and -workers must be at least 1")
	case len(c.servers) == 0:
		return c, errors.New("-servers: name at least one")
	}
	return c, nil
}

func main() {
	if os.Getenv(EnvRole) == roleClients {
		if err := clientsMain(); err != nil {
			fmt.Fprintln(os.Stderr, "cpbench clients:", err)
			os.Exit(1)
		}
		return
	}
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpbench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, cfg, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpbench:", err)
		os.Exit(1)
	}
}

// result is one server's figures.
type result struct {
	Server string
	// StartToReady: process start to its readiness endpoint; StartToFull:
	// to a first client holding every bench Address. StartCPU is the
	// server's CPU until then (informer lists, first build).
	StartToReady, StartToFull time.Duration
	StartCPU                  time.Duration
	Sync                      []float64 // per client, seconds (-1: never)
	Retries                   int64
	SyncCPU                   time.Duration
	RSSAfterSync              int64
	Changes                   []changeReply
	ChangeCPU                 time.Duration
	HWM                       int64
	Errs                      []string
	LoadAvg                   string // when the server was started
	// Settle is the wait after the sync until the server was quiet.
	Settle time.Duration
	// CPU of the others, for reading the server's figures: the clients
	// process and the cluster (etcd, kube-apiserver, controller manager)
	// during the sync and during all the changes.
	ClientsSyncCPU, ClientsChangeCPU time.Duration
	ClusterSyncCPU, ClusterChangeCPU time.Duration
}

// run is the orchestrator: cluster, objects, then each server alone with
// the clients process, then the table on out.
func run(ctx context.Context, cfg config, out, progress io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	logf := func(format string, args ...any) { fmt.Fprintf(progress, "cpbench: "+format+"\n", args...) }

	var istiodBin, pilotBin string
	tmp, err := os.MkdirTemp("", "ambit-cpbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, s := range cfg.servers {
		switch s {
		case "ambit":
			if istiodBin = cfg.istiod; istiodBin != "" {
				// The server runs in a temporary directory: resolve now.
				if istiodBin, err = filepath.Abs(istiodBin); err != nil {
					return err
				}
			} else {
				istiodBin = filepath.Join(tmp, "istiod")
				logf("building istiod")
				b := exec.CommandContext(ctx, "go", "build", "-o", istiodBin, "github.com/ambit-mesh/ambit/istiod/cmd/istiod")
				b.Stdout, b.Stderr = progress, progress
				if err := b.Run(); err != nil {
					return fmt.Errorf("building istiod (or pass -istiod): %w", err)
				}
			}
		case "pilot":
			if pilotBin = cfg.pilotBin; pilotBin == "" {
				if pilotBin, err = pilot.EnsureBinary(ctx, progress); err != nil {
					return fmt.Errorf("pilot-discovery (bash e2e/kube/pilot/build.sh builds it): %w", err)
				}
			}
		}
	}

	logf("starting the cluster")
	c, err := cluster.Start(ctx, cluster.Options{Progress: progress})
	if errors.Is(err, cluster.ErrNoBinaries) {
		return fmt.Errorf("%w: build them with `bash e2e/kube/build.sh` (~10 minutes on two cores)", err)
	}
	if err != nil {
		return err
	}
	defer c.Stop()
	if _, err := c.ApplyIstioCRDs(ctx); err != nil {
		return err
	}
	if err := ensureZtunnelSA(ctx, c); err != nil {
		return err
	}
	logf("creating %d namespaces, %d nodes, %d services, %d pods (at most %d writes/s, %d writers)",
		cfg.namespaces, cfg.nodes, cfg.services, cfg.pods, cfg.qps, cfg.workers)
	pop, err := populate(ctx, c, cfg, progress)
	if err != nil {
		return fmt.Errorf("creating the objects: %w", err)
	}
	logf("objects ready in %s (endpoint slices settled in %s)", pop.Took.Round(time.Millisecond), pop.Settle.Round(time.Millisecond))

	var results []result
	for _, name := range cfg.servers {
		logf("measuring %s", name)
		r, err := measure(ctx, c, cfg, name, istiodBin, pilotBin, tmp, progress)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		results = append(results, r)
	}
	report(out, cfg, pop, results)
	return nil
}

func ensureZtunnelSA(ctx context.Context, c *cluster.Cluster) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ztunnelNS}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := c.CreateServiceAccount(ctx, ztunnelNS, ztunnelSA); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// measure runs one server alone: start it, probe until it serves the full
// state, connect the clients, make the changes, and read its CPU and
// memory between the steps.
func measure(ctx context.Context, c *cluster.Cluster, cfg config, name, istiodBin, pilotBin, tmp string, progress io.Writer) (result, error) {
	r := result{Server: name, LoadAvg: loadAvg()}
	var (
		s   *server
		err error
	)
	switch name {
	case "ambit":
		s, err = startAmbit(ctx, c, istiodBin)
	case "pilot":
		s, err = startPilot(ctx, c, pilotBin, progress)
	}
	if err != nil {
		return r, err
	}
	defer s.stop()
	r.StartToReady = s.Ready.Sub(s.Started)

	cc := clientConfig{
		Tag: name, Addr: s.Addr, ServerName: s.ServerName, RootCAFile: s.RootCAFile,
		Kubeconfig: c.Kubeconfig, Clients: cfg.clients, Pods: cfg.pods, Services: cfg.services,
		Namespaces: cfg.namespaces, Nodes: cfg.nodes, Window: cfg.window,
		SyncTimeout: cfg.syncTimeout, ChangeTimeout: cfg.changeTimeout,
	}
	cp, err := startClients(ctx, cc, progress)
	if err != nil {
		return r, err
	}
	defer cp.stop()

	fail := func(err error) (result, error) {
		return r, fmt.Errorf("%w\n--- tail of %s's log ---\n%s", err, name, s.tail())
	}
	var probe syncReply
	if err := cp.call("probe", &probe); err != nil {
		return fail(err)
	}
	if probe.Err != "" {
		return fail(fmt.Errorf("probe client: %s", probe.Err))
	}
	r.StartToFull = time.Since(s.Started)
	p0, err := readProc(s.PID)
	if err != nil {
		return r, err
	}
	r.StartCPU = p0.CPU
	others := func() (clients, clus time.Duration) {
		if ps, err := readProc(cp.cmd.Process.Pid); err == nil {
			clients = ps.CPU
		}
		for _, pid := range c.PIDs() {
			if ps, err := readProc(pid); err == nil {
				clus += ps.CPU
			}
		}
		return clients, clus
	}
	cl0, k0 := others()
	fmt.Fprintf(progress, "cpbench: %s: ready after %s, full state to a client after %s, %.2f CPU-s\n",
		name, r.StartToReady.Round(time.Millisecond), r.StartToFull.Round(time.Millisecond), p0.CPU.Seconds())

	var sync syncReply
	if err := cp.call("sync", &sync); err != nil {
		return fail(err)
	}
	if sync.Err != "" {
		r.Errs = append(r.Errs, "sync: "+sync.Err)
	}
	r.Sync, r.Retries = sync.Sync, sync.Retries
	p1, err := readProc(s.PID)
	if err != nil {
		return r, err
	}
	r.SyncCPU, r.RSSAfterSync = p1.CPU-p0.CPU, p1.RSS
	cl1, k1 := others()
	r.ClientsSyncCPU, r.ClusterSyncCPU = cl1-cl0, k1-k0
	fmt.Fprintf(progress, "cpbench: %s: %d clients synced, p50 %s, max %s, %.2f CPU-s\n", name, cfg.clients,
		fmtSec(percentile(sync.Sync, 50)), fmtSec(percentile(sync.Sync, 100)), r.SyncCPU.Seconds())

	// Let the server finish what the sync left (pilot, e.g., keeps pushing
	// for a while after its streams were rate limited), so the first change
	// does not pay for it.
	r.Settle = waitQuiet(ctx, s.PID, 30*time.Second)
	p1, err = readProc(s.PID)
	if err != nil {
		return r, err
	}
	cl1, k1 = others()
	for i := range cfg.changes {
		var ch changeReply
		if err := cp.call(fmt.Sprintf("change %d", i), &ch); err != nil {
			return fail(err)
		}
		if ch.Err != "" {
			r.Errs = append(r.Errs, fmt.Sprintf("change %d: %s", i, ch.Err))
		}
		r.Changes = append(r.Changes, ch)
		fmt.Fprintf(progress, "cpbench: %s: change %d (%s): all clients in %s\n", name, i, ch.What, fmtSec(allClients(ch)))
	}
	p2, err := readProc(s.PID)
	if err != nil {
		return r, err
	}
	r.ChangeCPU, r.HWM = p2.CPU-p1.CPU, p2.HWM
	cl2, k2 := others()
	r.ClientsChangeCPU, r.ClusterChangeCPU = cl2-cl1, k2-k1
	if err := cp.quit(); err != nil {
		return fail(err)
	}
	if s.exited() {
		return fail(errors.New("the server exited during the run"))
	}
	return r, nil
}

// waitQuiet polls the CPU time of pid every 500 ms until it used less
// than 10 % of a core in two intervals in a row, or until limit, and returns
// how long that took.
func waitQuiet(ctx context.Context, pid int, limit time.Duration) time.Duration {
	start := time.Now()
	const every = 500 * time.Millisecond
	tick := time.NewTicker(every)
	defer tick.Stop()
	prev, err := readProc(pid)
	if err != nil {
		return 0
	}
	quiet := 0
	for time.Since(start) < limit && quiet < 2 {
		select {
		case <-ctx.Done():
			return time.Since(start)
		case <-tick.C:
		}
		cur, err := readProc(pid)
		if err != nil {
			break
		}
		if cur.CPU-prev.CPU < every/10 {
			quiet++
		} else {
			quiet = 0
		}
		prev = cur
	}
	return time.Since(start)
}

// allClients is the time until the last client had the change (-1 when
// some never did).
func allClients(ch changeReply) float64 {
	worst := 0.0
	for _, l := range ch.Latency {
		if l < 0 {
			return -1
		}
		worst = max(worst, l)
	}
	return worst
}

// clientsProc is the separate process of simulated ztunnels, driven over
// its stdin and stdout.
type clientsProc struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	done chan struct{}
}

func startClients(ctx context.Context, cc clientConfig, progress io.Writer) (*clientsProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(cc)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), EnvRole+"="+roleClients, EnvClientConfig+"="+string(js))
	cmd.Stderr = progress
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the clients process: %w", err)
	}
	p := &clientsProc{cmd: cmd, in: in, out: bufio.NewReaderSize(out, 1<<20), done: make(chan struct{})}
	go func() {
		<-ctx.Done()
		select {
		case <-p.done:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	}()
	return p, nil
}

// call sends one command and decodes its one-line answer. The clients
// process bounds every command by its own timeouts; a dead process ends
// the read with EOF.
func (p *clientsProc) call(cmd string, v any) error {
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		return fmt.Errorf("clients process: %s: %w", cmd, err)
	}
	line, err := p.out.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("clients process: %s: no answer: %w", cmd, err)
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("clients process: %s: %w (%q)", cmd, err, line)
	}
	return nil
}

// quit asks the process to clean up and exit, and waits (bounded).
func (p *clientsProc) quit() error {
	_, _ = fmt.Fprintln(p.in, "quit")
	_ = p.in.Close()
	errc := make(chan error, 1)
	go func() { errc <- p.cmd.Wait() }()
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	select {
	case err := <-errc:
		close(p.done)
		if err != nil {
			return fmt.Errorf("clients process: %w", err)
		}
		return nil
	case <-t.C:
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-errc
		close(p.done)
		return errors.New("clients process did not exit within a minute of quit")
	}
}

func (p *clientsProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	_ = p.in.Close()
	_ = p.cmd.Wait()
	close(p.done)
}
