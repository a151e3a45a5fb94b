package cluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Fixed cluster parameters. Pods get no IPs from this cluster (no kubelet);
// tests that need them write pod status themselves.
const (
	ServiceCIDR = "10.96.0.0/16"
	// Issuer is the service-account token issuer (the iss claim).
	Issuer = "https://kubernetes.default.svc.cluster.local"
)

// Options tune Start. The zero value is a usable default.
type Options struct {
	// Version of the Kubernetes binaries; DefaultVersion when empty.
	Version string
	// Progress receives build progress and start diagnostics; os.Stderr when
	// nil. Tests pass a writer that logs through t.
	Progress io.Writer
	// StartTimeout bounds each start attempt after the binaries exist
	// (etcd + kube-apiserver ready + controller-manager working); 3 minutes
	// when zero, generous because two loaded cores start kube-apiserver slowly.
	StartTimeout time.Duration
	// APIServerArgs and ControllerManagerArgs are appended to the built-in
	// flags (a repeated flag overrides the earlier value).
	APIServerArgs         []string
	ControllerManagerArgs []string
	// Scheduler also starts kube-scheduler (built by ../build.sh like the
	// rest), for tests with real kubelets (DaemonSet and Deployment pods
	// need it). SchedulerArgs are appended to its built-in flags.
	Scheduler     bool
	SchedulerArgs []string
	// NodeLifecycle runs the node lifecycle controller, off by default
	// because test nodes post no heartbeats. Clusters with real kubelets
	// need it: it removes the not-ready taint kubelets register with.
	// (--controllers in ControllerManagerArgs cannot re-enable it: the
	// flag is a list, and a repeated list flag appends.)
	NodeLifecycle bool
	// Keep leaves Dir on disk after Stop (AMBIT_KUBE_KEEP=1 does the same).
	Keep bool
}

// Cluster is a running etcd + kube-apiserver + kube-controller-manager on
// loopback. Its fields are read-only. Stop it exactly once (more calls are
// no-ops); every method is safe for concurrent use.
type Cluster struct {
	// Dir holds the PKI, the kubeconfigs, etcd's data and one log per
	// process (etcd.log, kube-apiserver.log, kube-controller-manager.log).
	Dir string
	// Server is the API server URL, https://127.0.0.1:<port>.
	Server string
	// Kubeconfig is an admin kubeconfig file (client certificate in group
	// system:masters), for kubectl and for programs under test.
	Kubeconfig string
	// Config is the admin client configuration; copy it (rest.CopyConfig)
	// before changing it.
	Config *rest.Config
	// Client is an admin clientset built from Config.
	Client *kubernetes.Clientset
	// AdminToken is a static bearer token of user "admin" in system:masters.
	AdminToken string
	// CAPEM is the cluster CA, which signed the API server's certificate.
	CAPEM []byte
	// CAFile is CAPEM's file.
	CAFile string
	// EtcdURL is the etcd client URL.
	EtcdURL string
	// Binaries are the programs this cluster runs.
	Binaries Binaries

	pki      *pki
	keep     bool
	procs    []*process // in start order
	stopOnce sync.Once
	stopErr  error
}

// errPortInUse marks a start attempt lost to a race for a free port.
var errPortInUse = errors.New("port taken")

// Start builds the binaries if they are missing (see EnsureBinaries), then
// starts a fresh cluster in a new temporary directory and returns once the API
// server is ready and the controller manager has created the default
// namespace's ServiceAccount. ctx bounds the start only; the cluster runs
// until Stop. On error nothing is left running and the error carries the tail
// of each process's log.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Version == "" {
		opts.Version = DefaultVersion
	}
	if opts.Progress == nil {
		opts.Progress = os.Stderr
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 3 * time.Minute
	}
	bins, err := ensureBinaries(ctx, opts.Version, opts.Progress, opts.Scheduler)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		c, err := start(ctx, opts, bins)
		if errors.Is(err, errPortInUse) && attempt < 3 {
			fmt.Fprintf(opts.Progress, "e2e/kube: %v; retrying with other ports\n", err)
			continue
		}
		return c, err
	}
}

func start(ctx context.Context, opts Options, bins Binaries) (_ *Cluster, retErr error) {
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	begin := time.Now()
	var phases []string
	phase := func(name string) {
		phases = append(phases, fmt.Sprintf("%s %.1fs", name, time.Since(begin).Seconds()))
	}

	dir, err := os.MkdirTemp("", "ambit-kube-")
	if err != nil {
		return nil, fmt.Errorf("creating cluster dir: %w", err)
	}
	c := &Cluster{Dir: dir, Binaries: bins, keep: opts.Keep || os.Getenv(EnvKeep) == "1"}
	defer func() {
		if retErr == nil {
			return
		}
		retErr = c.startFailure(retErr)
		_ = c.Stop() // removes Dir unless kept on request

	}()

	if err := os.MkdirAll(filepath.Join(dir, "pki"), 0o700); err != nil {
		return nil, err
	}
	p, err := makePKI(filepath.Join(dir, "pki"))
	if err != nil {
		return nil, err
	}
	c.CAPEM, c.CAFile, c.pki = p.caPEM, p.caCert, p

	c.AdminToken, err = randomToken()
	if err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(dir, "pki", "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(c.AdminToken+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("writing token file: %w", err)
	}

	ports, err := FreePorts(3)
	if err != nil {
		return nil, err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	c.EtcdURL = "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	c.Server = "https://127.0.0.1:" + strconv.Itoa(apiPort)

	// etcd
	etcd, err := c.startProcess("etcd", bins.Etcd, []string{
		"--name=default",
		"--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-urls=" + c.EtcdURL,
		"--advertise-client-urls=" + c.EtcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=default=" + peerURL,
		"--logger=zap",
		"--log-level=warn",
	})
	if err != nil {
		return nil, err
	}
	if err := pollReady(ctx, etcd, "etcd /health", func(ctx context.Context) error {
		return httpOK(ctx, http.DefaultClient, c.EtcdURL+"/health", "", `"true"`)
	}); err != nil {
		return nil, err
	}
	phase("etcd")

	// kube-apiserver
	apiArgs := append([]string{
		"--etcd-servers=" + c.EtcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + filepath.Join(dir, "apiserver"),
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servKey,
		"--client-ca-file=" + p.caCert,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=" + Issuer,
		"--service-account-key-file=" + p.saPub,
		"--service-account-signing-key-file=" + p.saKey,
		"--service-cluster-ip-range=" + ServiceCIDR,
		// A loopback advertise address is refused by the default reconciler.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--profiling=false",
		// Logs, exec and port-forward: the API server calls kubelets at
		// their InternalIP with this client certificate.
		"--kubelet-client-certificate=" + p.kubeletCert,
		"--kubelet-client-key=" + p.kubeletKey,
		"--kubelet-preferred-address-types=InternalIP",
	}, opts.APIServerArgs...)
	api, err := c.startProcess("kube-apiserver", bins.APIServer, apiArgs)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.caPEM)
	apiHTTP := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer apiHTTP.CloseIdleConnections()
	if err := pollReady(ctx, api, "kube-apiserver /readyz", func(ctx context.Context) error {
		return httpOK(ctx, apiHTTP, c.Server+"/readyz", c.AdminToken, "ok")
	}); err != nil {
		return nil, err
	}
	phase("kube-apiserver")

	// Client configuration and kubeconfigs.
	c.Config = &rest.Config{
		Host: c.Server,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   p.caPEM,
			CertData: p.adminCertPEM,
			KeyData:  p.adminKP,
		},
		QPS:   200,
		Burst: 400,
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, fmt.Errorf("building admin client: %w", err)
	}
	c.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, c.Server, p.caCert, "admin", p.adminCert, p.adminKey); err != nil {
		return nil, err
	}
	kcmKubeconfig := filepath.Join(dir, "kcm.kubeconfig")
	if err := writeKubeconfig(kcmKubeconfig, c.Server, p.caCert, "system:kube-controller-manager", p.kcmCert, p.kcmKey); err != nil {
		return nil, err
	}

	// kube-controller-manager
	kcmArgs := []string{
		"--kubeconfig=" + kcmKubeconfig,
		"--authentication-kubeconfig=" + kcmKubeconfig,
		"--authorization-kubeconfig=" + kcmKubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		"--service-account-private-key-file=" + p.saKey,
		"--root-ca-file=" + p.caCert,
		"--use-service-account-credentials=true",
		"--cluster-signing-cert-file=" + p.caCert,
		"--cluster-signing-key-file=" + p.caKey,
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--kube-api-qps=200",
		"--kube-api-burst=400",
	}
	if !opts.NodeLifecycle {
		// Test nodes post no heartbeats: the node lifecycle controller
		// would mark their pods NotReady after ~50s.
		kcmArgs = append(kcmArgs, "--controllers=*,-node-lifecycle-controller")
	}
	kcmArgs = append(kcmArgs, opts.ControllerManagerArgs...)
	kcm, err := c.startProcess("kube-controller-manager", bins.ControllerManager, kcmArgs)
	if err != nil {
		return nil, err
	}
	// The controller manager works once the serviceaccount controller has
	// made the default namespace's ServiceAccount.
	if err := pollReady(ctx, kcm, "kube-controller-manager (ServiceAccount default/default)", func(ctx context.Context) error {
		_, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return nil, err
	}
	phase("kube-controller-manager")

	if opts.Scheduler {
		if err := c.startScheduler(ctx, opts.SchedulerArgs); err != nil {
			return nil, err
		}
		phase("kube-scheduler")
	}
	fmt.Fprintf(opts.Progress, "e2e/kube: cluster %s up in %s (ready at: %s)\n",
		c.Server, time.Since(begin).Round(time.Millisecond), strings.Join(phases, ", "))
	return c, nil
}

// startScheduler starts kube-scheduler and waits until it holds its lease:
// from then on it binds pending pods.
func (c *Cluster) startScheduler(ctx context.Context, extra []string) error {
	kubeconfig := filepath.Join(c.Dir, "scheduler.kubeconfig")
	if err := writeKubeconfig(kubeconfig, c.Server, c.pki.caCert, "system:kube-scheduler", c.pki.schedCert, c.pki.schedKey); err != nil {
		return err
	}
	args := append([]string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--kube-api-qps=200",
		"--kube-api-burst=400",
	}, extra...)
	sched, err := c.startProcess("kube-scheduler", c.Binaries.Scheduler, args)
	if err != nil {
		return err
	}
	return pollReady(ctx, sched, "kube-scheduler (Lease kube-system/kube-scheduler)", func(ctx context.Context) error {
		_, err := c.Client.CoordinationV1().Leases("kube-system").Get(ctx, "kube-scheduler", metav1.GetOptions{})
		return err
	})
}

func (c *Cluster) startProcess(name, bin string, args []string) (*process, error) {
	p, err := startProcess(c.Dir, name, bin, args)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// startFailure decorates a start error with each process's state and log
// tail, and with what to do next.
func (c *Cluster) startFailure(err error) error {
	var b strings.Builder
	fmt.Fprintf(&b, "starting kubernetes test cluster in %s: %v", c.Dir, err)
	portRace := false
	for _, p := range c.procs {
		tail := p.tail(25)
		if strings.Contains(tail, "address already in use") {
			portRace = true
		}
		fmt.Fprintf(&b, "\n  %s (%s), last lines of %s:\n%s", p.name, p.describeExit(), p.logPath, tail)
	}
	b.WriteString("\n  what to do: read the logs above; set " + EnvKeep + "=1 to keep " + c.Dir +
		"; if a binary is broken, delete its cache dir (see BinDir) and rerun to rebuild")
	if portRace {
		return fmt.Errorf("%w: %s", errPortInUse, b.String())
	}
	return errors.New(b.String())
}

// Stop kills every process and removes Dir (unless kept). It is safe to call
// more than once and from a deferred cleanup after a failed test.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		for i := len(c.procs) - 1; i >= 0; i-- {
			if err := c.procs[i].kill(); err != nil {
				errs = append(errs, err)
			}
		}
		if !c.keep {
			if err := os.RemoveAll(c.Dir); err != nil {
				errs = append(errs, fmt.Errorf("removing %s: %w", c.Dir, err))
			}
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}

// PIDs returns the process ids of the cluster's processes (for leak checks).
func (c *Cluster) PIDs() []int {
	out := make([]int, 0, len(c.procs))
	for _, p := range c.procs {
		out = append(out, p.cmd.Process.Pid)
	}
	return out
}

// LogPaths maps each process name to its log file.
func (c *Cluster) LogPaths() map[string]string {
	out := make(map[string]string, len(c.procs))
	for _, p := range c.procs {
		out[p.name] = p.logPath
	}
	return out
}

// pollReady calls check every 100ms until it succeeds, proc exits or ctx ends.
func pollReady(ctx context.Context, proc *process, what string, check func(context.Context) error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-proc.done:
			return fmt.Errorf("%s exited before %s: %v", proc.name, what, proc.err)
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last check: %v)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

func httpOK(ctx context.Context, client *http.Client, url, token, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s: %s: %.200s", url, resp.Status, body)
	}
	return nil
}

// FreePorts reserves n distinct loopback ports by listening, then releases
// them for child processes. Another process may take one before the child
// binds it: callers retry, or report the address in the start failure.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free loopback port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func writeKubeconfig(path, server, caFile, user, certFile, keyFile string) error {
	return writeKubeconfigTLS(path, server, caFile, "", user, certFile, keyFile)
}

// writeKubeconfigTLS is writeKubeconfig checking the server's certificate
// under tlsServerName when not empty.
func writeKubeconfigTLS(path, server, caFile, tlsServerName, user, certFile, keyFile string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["ambit-e2e"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile, TLSServerName: tlsServerName}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificate: certFile, ClientKey: keyFile}
	cfg.Contexts["ambit-e2e"] = &clientcmdapi.Context{Cluster: "ambit-e2e", AuthInfo: user}
	cfg.CurrentContext = "ambit-e2e"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}
