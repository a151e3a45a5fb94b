package pilot

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

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
)

// Fixed parameters of the pilot-discovery this package runs. They are Istio's
// defaults and ambient.Options' defaults, so both istiods agree.
const (
	// Namespace is pilot's own namespace (POD_NAMESPACE) and the mesh's root
	// namespace; Start creates it when missing.
	Namespace = "istio-system"
	// ClusterID is the cluster name (--clusterID; CLUSTER_ID).
	ClusterID = "Kubernetes"
	// DomainSuffix is the service DNS suffix (--domain).
	DomainSuffix = "cluster.local"
	// TrustDomain of the mesh (meshConfig.trustDomain).
	TrustDomain = "cluster.local"
	// ServerName is the DNS name in pilot's self-issued serving certificate
	// (the secure gRPC port's).
	ServerName = "istiod.istio-system.svc"
	// RootCertConfigMap is the ConfigMap pilot writes into every namespace
	// with its root certificate under RootCertKey.
	RootCertConfigMap = "istio-ca-root-cert"
	RootCertKey       = "root-cert.pem"
	// CASecret is where pilot keeps its self-signed root, under
	// CASecretCertKey.
	CASecret        = "istio-ca-secret"
	CASecretCertKey = "ca-cert.pem"
	// CAAudience is the audience pilot expects in a caller's service-account
	// token (Istio's default TOKEN_AUDIENCES).
	CAAudience = "istio-ca"
)

// readyTimeout bounds the wait for pilot's /ready after its start (it
// includes informer sync and the CA's first secret).
const readyTimeout = 2 * time.Minute

// Options configure Start.
type Options struct {
	// Binary is pilot-discovery's path; EnsureBinary's when empty.
	Binary string
	// Env adds or overrides environment variables of pilot-discovery
	// ("NAME=value").
	Env []string
	// Args are appended to the command line.
	Args []string
	// Progress receives build progress and start diagnostics; os.Stderr
	// when nil.
	Progress io.Writer
}

// Pilot is a running pilot-discovery. Its fields are read-only; Stop it once
// (more calls are no-ops).
type Pilot struct {
	// Dir is the working directory: mesh config, kubeconfig copy, log.
	Dir string
	// Log is pilot-discovery's combined stdout and stderr.
	Log string
	// HTTPAddr serves /ready and /debug (--httpAddr); GRPCAddr is the
	// plaintext xDS port (15010, --grpcAddr); SecureGRPCAddr is xDS and the
	// CA over TLS (15012, --secureGRPCAddr); MonitoringAddr serves
	// /metrics (15014).
	HTTPAddr, GRPCAddr, SecureGRPCAddr, MonitoringAddr string
	// Args and Env are what the process was started with (Env: only what
	// Start sets on top of the test's environment).
	Args, Env []string

	cluster *cluster.Cluster
	cmd     *exec.Cmd
	logFile *os.File
	done    chan struct{}
	stop    sync.Once
	stopErr error
}

// Start runs pilot-discovery against c's API server, as ambient istiod
// outside a cluster: Istio's and Gateway API's CRDs are applied first (pilot
// waits for them), then it is started with loopback ports chosen here, and
// Start returns once its /ready answers 200. ctx bounds the build and the
// start only. On error nothing is left running and the error carries the tail
// of pilot's log.
func Start(ctx context.Context, c *cluster.Cluster, opts Options) (*Pilot, error) {
	progress := opts.Progress
	if progress == nil {
		progress = os.Stderr
	}
	bin := opts.Binary
	if bin == "" {
		var err error
		if bin, err = EnsureBinary(ctx, progress); err != nil {
			return nil, err
		}
	}
	if err := applyCRDs(ctx, c); err != nil {
		return nil, fmt.Errorf("applying Istio and Gateway API CRDs for pilot-discovery: %w", err)
	}
	if err := ensureNamespace(ctx, c, Namespace); err != nil {
		return nil, err
	}
	// The loopback ports are chosen free, then released for pilot to bind:
	// meanwhile any outgoing connection may take one as its source port.
	// pilot then exits on "address already in use", and a new set of
	// ports is tried.
	const attempts = 3
	for attempt := 1; ; attempt++ {
		dir, err := os.MkdirTemp("", "ambit-pilot-")
		if err != nil {
			return nil, fmt.Errorf("creating pilot-discovery's directory: %w", err)
		}
		p, err := start(ctx, c, bin, dir, opts)
		if err == nil {
			return p, nil
		}
		portTaken := p != nil && strings.Contains(p.Tail(40), "address already in use")
		if p != nil {
			_ = p.Stop()
		} else if os.Getenv(envKeep) != "1" {
			_ = os.RemoveAll(dir)
		}
		if !portTaken || attempt == attempts || ctx.Err() != nil {
			return nil, err
		}
		fmt.Fprintf(progress, "pilot-discovery: one of its ports was taken before it bound it; starting again with new ports (attempt %d of %d)\n", attempt+1, attempts)
	}
}

func start(ctx context.Context, c *cluster.Cluster, bin, dir string, opts Options) (*Pilot, error) {
	mesh := filepath.Join(dir, "mesh.yaml")
	meshYAML := "rootNamespace: " + Namespace + "\ntrustDomain: " + TrustDomain + "\n"
	if err := os.WriteFile(mesh, []byte(meshYAML), 0o644); err != nil {
		return nil, fmt.Errorf("writing pilot's mesh config: %w", err)
	}
	networks := filepath.Join(dir, "meshNetworks.yaml")
	if err := os.WriteFile(networks, []byte("networks: {}\n"), 0o644); err != nil {
		return nil, fmt.Errorf("writing pilot's mesh networks: %w", err)
	}
	ports, err := cluster.FreePorts(5)
	if err != nil {
		return nil, err
	}
	addr := func(p int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) }
	p := &Pilot{
		Dir:            dir,
		Log:            filepath.Join(dir, "pilot-discovery.log"),
		HTTPAddr:       addr(ports[0]),
		GRPCAddr:       addr(ports[1]),
		SecureGRPCAddr: addr(ports[2]),
		MonitoringAddr: addr(ports[3]),
		cluster:        c,
		done:           make(chan struct{}),
	}
	p.Args = []string{
		"discovery",
		"--kubeconfig", c.Kubeconfig,
		"--meshConfig", mesh,
		"--networksConfig", networks,
		"--domain", DomainSuffix,
		"--clusterID", ClusterID,
		"--httpAddr", p.HTTPAddr,
		"--grpcAddr", p.GRPCAddr,
		"--secureGRPCAddr", p.SecureGRPCAddr,
		"--monitoringAddr", p.MonitoringAddr,
		"--httpsAddr", addr(ports[4]), // webhooks: unused, but must not collide
		"--ctrlz_port", "0", // a random port: parallel pilots must not collide
		"--log_output_level", "default:info",
	}
	p.Args = append(p.Args, opts.Args...)
	p.Env = []string{
		"PILOT_ENABLE_AMBIENT=true",
		"POD_NAMESPACE=" + Namespace,
		"POD_NAME=istiod-ambit-e2e",
		"CLUSTER_ID=" + ClusterID,
		"REVISION=default",
		// No injector template directory exists outside a pod: injection
		// stays off, as the tests need no sidecars.
		"INJECT_ENABLED=false",
		// The validation webhook configuration is not installed.
		"VALIDATION_WEBHOOK_CONFIG_NAME=",
	}
	p.Env = append(p.Env, opts.Env...)

	f, err := os.Create(p.Log)
	if err != nil {
		return nil, fmt.Errorf("creating pilot-discovery's log: %w", err)
	}
	fmt.Fprintf(f, "# %s %q\n# env %q\n", bin, p.Args, p.Env)
	p.logFile = f
	cmd := exec.Command(bin, p.Args...)
	cmd.Dir = dir // pilot reads ./etc, ./var relative to its working directory
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// pilot dies with the test binary even when Stop is never reached.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	p.cmd = cmd
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()

	rctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if err := p.waitReady(rctx); err != nil {
		return p, fmt.Errorf("pilot-discovery did not become ready: %w\n--- tail of %s ---\n%s", err, p.Log, p.Tail(40))
	}
	return p, nil
}

func (p *Pilot) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	url := "http://" + p.HTTPAddr + "/ready"
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if p.Exited() {
			return fmt.Errorf("pilot-discovery exited: %s", p.cmd.ProcessState)
		}
		last = getOK(ctx, client, url)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", url, ctx.Err(), last)
		case <-p.done:
		case <-tick.C:
		}
	}
}

func getOK(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// Exited reports whether the process has ended.
func (p *Pilot) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Tail returns the last n lines of pilot's log.
func (p *Pilot) Tail(n int) string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Stop kills pilot-discovery and removes Dir (kept when AMBIT_KUBE_KEEP=1).
// It is safe to call more than once.
func (p *Pilot) Stop() error {
	p.stop.Do(func() {
		if p.cmd != nil && p.cmd.Process != nil {
			// The whole process group: pilot has no children, but be sure.
			if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				p.stopErr = fmt.Errorf("killing pilot-discovery: %w", err)
			}
			<-p.done
		}
		if p.logFile != nil {
			_ = p.logFile.Close()
		}
		if os.Getenv(envKeep) != "1" {
			if err := os.RemoveAll(p.Dir); err != nil && p.stopErr == nil {
				p.stopErr = err
			}
		}
	})
	return p.stopErr
}

// PID is pilot-discovery's process id (for leak checks).
func (p *Pilot) PID() int {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// RootCert waits until pilot has published its own root certificate into
// namespace (the istio-ca-root-cert ConfigMap) and returns it (PEM). Its
// own: the ConfigMap must hold the root of pilot's CA Secret
// (istio-ca-secret in pilot's namespace), since another control plane
// that ran on the cluster before (Ambit's istiod publishes the same
// ConfigMap) may have left its root there until pilot replaces it.
func (p *Pilot) RootCert(ctx context.Context, namespace string) ([]byte, error) {
	var pem []byte
	err := cluster.Eventually(ctx, "ConfigMap "+namespace+"/"+RootCertConfigMap+" with pilot's root", func(ctx context.Context) error {
		sec, err := p.cluster.Client.CoreV1().Secrets(Namespace).Get(ctx, CASecret, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("pilot's CA Secret %s/%s: %w", Namespace, CASecret, err)
		}
		own := bytes.TrimSpace(sec.Data[CASecretCertKey])
		if len(own) == 0 {
			return fmt.Errorf("no %s in Secret %s/%s yet", CASecretCertKey, Namespace, CASecret)
		}
		cm, err := p.cluster.Client.CoreV1().ConfigMaps(namespace).Get(ctx, RootCertConfigMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		v := cm.Data[RootCertKey]
		if v == "" {
			return fmt.Errorf("no %s in it yet", RootCertKey)
		}
		if !bytes.Equal(bytes.TrimSpace([]byte(v)), own) {
			return errors.New("it holds another root than pilot's CA Secret (left by another control plane; pilot replaces it)")
		}
		pem = []byte(v)
		return nil
	})
	return pem, err
}

// applyCRDs applies Istio's and Gateway API's CRDs, which pilot waits for.
// Gateway API's directory also holds a kustomization.yaml, which
// cluster.ApplyCRDs (and so Cluster.ApplyIstioCRDs) refuses as a document
// without a kind: only the CRD files are passed.
func applyCRDs(ctx context.Context, c *cluster.Cluster) error {
	istio, err := cluster.IstioCRDs(ctx)
	if err != nil {
		return err
	}
	gwDir, err := cluster.GatewayAPICRDs(ctx)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(gwDir)
	if err != nil {
		return fmt.Errorf("listing Gateway API CRDs: %w", err)
	}
	paths := []string{istio}
	for _, e := range entries {
		if !e.IsDir() && strings.HasPrefix(e.Name(), "gateway.networking.") && strings.HasSuffix(e.Name(), ".yaml") {
			paths = append(paths, filepath.Join(gwDir, e.Name()))
		}
	}
	_, err = cluster.ApplyCRDs(ctx, c.Config, paths...)
	return err
}

func ensureNamespace(ctx context.Context, c *cluster.Cluster, name string) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}
