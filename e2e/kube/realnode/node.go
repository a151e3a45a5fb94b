package realnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/ctl/local"
	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
	"github.com/ambit-mesh/ambit/pkg/netns"
)

// Options tune Start. Cluster is required.
type Options struct {
	// Cluster is the control plane the node joins (its PKI signs the
	// kubelet's client certificate; its CA authenticates the API server's
	// calls to the kubelet).
	Cluster *cluster.Cluster
	// Name is the Node's name and names the netns and host link
	// (Prefix+Name, at most 9 characters); "realnode" when empty.
	Name string
	// Index (0-63) picks the node's addresses: NodeIP, HostIP, PodCIDR.
	Index int
	// CNIBinDir holds the CNI plugins containerd runs; when empty, a
	// directory of the node with bridge and host-local (built once into
	// the cache, see ctl/local.InstallPlugins).
	CNIBinDir string
	// CNIConfDir is containerd's CNI conf dir; when empty, a directory of
	// the node. Start writes the bridge conflist there (WriteBridgeConflist)
	// unless it already holds a *.conflist.
	CNIConfDir string
	// PauseImage is the sandbox image's reference (containerd's pinned
	// sandbox image); PauseImage (the package variable) when empty.
	// PauseImageTar is its tarball, tagged so (e.g. bin/images/pause.tar
	// with PauseImage images.Tag(hub, "pause", version)); built by
	// BuildPauseImage when empty.
	PauseImage, PauseImageTar string
	// Images are more image tarballs to import before kubelet starts.
	Images []string
	// PodNetnsInVarRun puts the pods' network namespaces where containerd
	// puts them by default, /var/run/netns/cni-<uuid> (what Istio's CNI
	// chart mounts), instead of under RunDir. Stop removes every pod
	// through the CRI first, which deletes them; a crashed run's are not
	// recognized by Cleanup.
	PodNetnsInVarRun bool
	// Snapshotter is containerd's snapshotter: "overlayfs" when empty.
	Snapshotter string
	// ReadyTimeout bounds the start until the Node is Ready; 3 minutes when
	// zero.
	ReadyTimeout time.Duration
	// KubeletArgs are appended to kubelet's flags.
	KubeletArgs []string
	// NoKubeProxy leaves kube-proxy out. By default it runs in the node's
	// netns (iptables mode), so ClusterIP Services work from the node and
	// its pods, and Start points the kubernetes Service at the API server
	// forwarder (EndpointSlice default/kubernetes-realnode: HostIP, the API
	// server's port, which is the Service's targetPort).
	NoKubeProxy bool
	// Progress receives build progress and start diagnostics (os.Stderr
	// when nil).
	Progress io.Writer
	// Keep leaves the node's directory (logs, configs) after Stop
	// (AMBIT_KUBE_KEEP=1 does the same); the next Start removes it.
	Keep bool
}

// Node is a running containerd + kubelet registered with the cluster. Its
// fields are read-only. Stop it exactly once (more calls are no-ops).
type Node struct {
	lock *os.File // LockPath, held until Stop

	// Name is the Node object's name.
	Name string
	// Netns is the name of the node's network namespace (under
	// /var/run/netns); containerd, kubelet and host-network pods run in it.
	Netns string
	// IP is the node's InternalIP (eth0 in Netns), where kubelet serves
	// 10250; HostIP is the host's end of the link; PodCIDR the pods' range.
	IP, HostIP netip.Addr
	PodCIDR    netip.Prefix
	// Dir holds the configs, logs (Dir/logs/<daemon>.log), containerd's
	// root and kubelet's root.
	Dir string
	// RunDir holds the sockets and containerd's state.
	RunDir string
	// ContainerdSocket is containerd's gRPC socket (CRI and ctr).
	ContainerdSocket string
	// CNIBinDir and CNIConfDir are containerd's CNI directories.
	CNIBinDir, CNIConfDir string
	// APIServer is the address, in the host at HostIP, where a forwarder
	// relays to the cluster's API server (which listens on the host's
	// loopback only); the kubelet's kubeconfig points there.
	APIServer string
	// Kubeconfig is the kubelet's (user system:node:<Name>).
	Kubeconfig string
	// Binaries are the programs the node runs.
	Binaries Binaries
	// ReadyAfter is how long Start took until the Node was Ready.
	ReadyAfter time.Duration

	cluster  *cluster.Cluster
	keep     bool
	procs    []*proc // containerd, kubelet
	fwd      net.Listener
	stopOnce sync.Once
	stopErr  error
}

// Start prepares the host (after removing every leftover of Prefix: see
// Cleanup), builds missing binaries (EnsureBinaries), creates the node's
// netns, link, cgroups and directories, starts containerd, imports the
// pause image and opts.Images, starts kubelet and returns once the Node is
// Ready. On error everything is torn down and the error carries the
// daemons' log tails. It needs root.
func Start(ctx context.Context, opts Options) (_ *Node, retErr error) {
	begin := time.Now()
	if opts.Cluster == nil {
		return nil, errors.New("realnode: Options.Cluster is required")
	}
	if opts.Name == "" {
		opts.Name = "realnode"
	}
	if len(Prefix+opts.Name) > 15 {
		return nil, fmt.Errorf("realnode: Options.Name %q is too long: the link %s%s must fit 15 characters", opts.Name, Prefix, opts.Name)
	}
	if opts.Index < 0 || opts.Index > 63 {
		return nil, fmt.Errorf("realnode: Options.Index %d is out of 0-63", opts.Index)
	}
	if opts.Progress == nil {
		opts.Progress = os.Stderr
	}
	if opts.PauseImage == "" {
		opts.PauseImage = PauseImage
	}
	if opts.PauseImageTar == "" && opts.PauseImage != PauseImage {
		return nil, fmt.Errorf("realnode: Options.PauseImage %s needs Options.PauseImageTar (only %s is built here)", opts.PauseImage, PauseImage)
	}
	if opts.Snapshotter == "" {
		opts.Snapshotter = "overlayfs"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 3 * time.Minute
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("realnode: a real node needs root (netns, cgroups, mounts)")
	}
	bins, err := EnsureBinaries(ctx, opts.Progress)
	if err != nil {
		return nil, err
	}
	// One real node per machine (fixed prefix, directories and ports):
	// a second test package waits here until the first node stopped,
	// rather than sweeping it away as a leftover.
	lock, err := lockMachine(ctx, opts.Progress)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			lock.Close()
		}
	}()
	if err := Cleanup(); err != nil {
		return nil, fmt.Errorf("realnode: removing leftovers of an earlier run: %w", err)
	}

	n := &Node{
		Name: opts.Name, Netns: Prefix + opts.Name,
		IP: NodeIP(opts.Index), HostIP: HostIP(opts.Index), PodCIDR: PodCIDR(opts.Index),
		Dir: filepath.Join(DataRoot, opts.Name), RunDir: filepath.Join(RunRoot, opts.Name),
		Binaries: bins, cluster: opts.Cluster,
		keep: opts.Keep || os.Getenv(cluster.EnvKeep) == "1",
		lock: lock,
	}
	n.ContainerdSocket = filepath.Join(n.RunDir, "containerd.sock")
	defer func() {
		if retErr != nil {
			retErr = n.startFailure(retErr)
			_ = n.Stop()
		}
	}()
	for _, d := range []string{n.Dir, n.RunDir, n.logDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := saveSysctls(); err != nil {
		return nil, err
	}
	if err := setupNetwork(n.Netns, Prefix+opts.Name, opts.Index); err != nil {
		return nil, err
	}
	runtimeCgroups, err := setupCgroups(opts.Name)
	if err != nil {
		return nil, err
	}
	if err := n.startForwarder(); err != nil {
		return nil, err
	}
	if err := n.setupCNI(ctx, opts); err != nil {
		return nil, err
	}
	if err := n.startContainerd(ctx, opts, runtimeCgroups); err != nil {
		return nil, err
	}
	pause := opts.PauseImageTar
	if pause == "" {
		if pause, err = BuildPauseImage(ctx, filepath.Join(n.Dir, "images")); err != nil {
			return nil, err
		}
	}
	for _, img := range append([]string{pause}, opts.Images...) {
		if err := n.ImportImage(ctx, img); err != nil {
			return nil, err
		}
	}
	if err := n.startKubelet(ctx, opts, runtimeCgroups); err != nil {
		return nil, err
	}
	if !opts.NoKubeProxy {
		if err := n.startKubeProxy(ctx, runtimeCgroups); err != nil {
			return nil, err
		}
	}
	n.ReadyAfter = time.Since(begin)
	fmt.Fprintf(opts.Progress, "realnode: node %s Ready after %s (ip %s, pods %s, logs %s)\n",
		n.Name, n.ReadyAfter.Round(100*time.Millisecond), n.IP, n.PodCIDR, n.logDir())
	return n, nil
}

// IPAMDir is where the bridge conflist's host-local IPAM records the pods'
// addresses (a file per IP, under the network's name).
func (n *Node) IPAMDir() string { return filepath.Join(n.Dir, "cni", "ipam") }

func (n *Node) logDir() string { return filepath.Join(n.Dir, "logs") }

// LogPath returns the log file of daemon "containerd" or "kubelet".
func (n *Node) LogPath(daemon string) string { return filepath.Join(n.logDir(), daemon+".log") }

// NetnsPath is the node's network namespace file.
func (n *Node) NetnsPath() string { return netns.Path(n.Netns) }

func (n *Node) startForwarder() error {
	u, err := url.Parse(n.cluster.Server)
	if err != nil {
		return err
	}
	target := u.Host
	// The same port as the API server's: the kubernetes Service's
	// targetPort, should a proxy on the node send 10.96.0.1:443 here.
	l, err := net.Listen("tcp", net.JoinHostPort(n.HostIP.String(), u.Port()))
	if err != nil {
		return fmt.Errorf("API server forwarder on %s: %w", n.HostIP, err)
	}
	n.fwd = l
	n.APIServer = l.Addr().String()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go relay(c, target)
		}
	}()
	return nil
}

func relay(c net.Conn, target string) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		slog.Warn("realnode: API server forwarder cannot dial", "target", target, "error", err)
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(u, c)
	go cp(c, u)
	<-done
	<-done
}

func (n *Node) setupCNI(ctx context.Context, opts Options) error {
	n.CNIBinDir, n.CNIConfDir = opts.CNIBinDir, opts.CNIConfDir
	if n.CNIBinDir == "" {
		n.CNIBinDir = filepath.Join(n.Dir, "cni", "bin")
		if err := local.InstallPlugins(ctx, n.CNIBinDir, nil, opts.Progress); err != nil {
			return err
		}
	}
	if n.CNIConfDir == "" {
		n.CNIConfDir = filepath.Join(n.Dir, "cni", "net.d")
	}
	existing, _ := filepath.Glob(filepath.Join(n.CNIConfDir, "*.conflist"))
	if len(existing) == 0 {
		return WriteBridgeConflist(n.CNIConfDir, n.IPAMDir(), n.PodCIDR)
	}
	return nil
}

func (n *Node) startContainerd(ctx context.Context, opts Options, cgroups []string) error {
	cfgPath := filepath.Join(n.Dir, "containerd.toml")
	cfg := containerdConfig(filepath.Join(n.Dir, "containerd"), filepath.Join(n.RunDir, "containerd"),
		n.ContainerdSocket, n.Binaries.Runc, n.CNIBinDir, n.CNIConfDir, opts.Snapshotter, opts.PauseImage, !opts.PodNetnsInVarRun)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	// containerd finds its shim in PATH.
	env := []string{"PATH=" + filepath.Dir(n.Binaries.Shim) + ":" + os.Getenv("PATH")}
	p, err := startProc(n.logDir(), "containerd", n.NetnsPath(), n.Binaries.Containerd, []string{"--config", cfgPath}, env)
	if err != nil {
		return err
	}
	n.procs = append(n.procs, p)
	if err := joinCgroups(cgroups, p.cmd.Process.Pid); err != nil {
		return err
	}
	return poll(ctx, time.Minute, p, "containerd answering on "+n.ContainerdSocket, func(ctx context.Context) error {
		_, err := n.Ctr(ctx, "version")
		return err
	})
}

// Ctr runs ctr against the node's containerd in namespace k8s.io (the CRI's)
// and returns its standard output (the error carries its standard error).
func (n *Node) Ctr(ctx context.Context, args ...string) ([]byte, error) {
	return n.command(ctx, n.Binaries.Ctr, append([]string{"--address", n.ContainerdSocket, "--namespace", "k8s.io"}, args...)...)
}

// Crictl runs crictl against the node's containerd and returns its
// standard output (the error carries its standard error).
func (n *Node) Crictl(ctx context.Context, args ...string) ([]byte, error) {
	cfg := filepath.Join(n.Dir, "crictl.yaml")
	if _, err := os.Stat(cfg); err != nil {
		ep := "unix://" + n.ContainerdSocket
		b := "runtime-endpoint: " + ep + "\nimage-endpoint: " + ep + "\ntimeout: 30\n"
		if err := os.WriteFile(cfg, []byte(b), 0o644); err != nil {
			return nil, err
		}
	}
	return n.command(ctx, n.Binaries.Crictl, append([]string{"--config", cfg}, args...)...)
}

func (n *Node) command(ctx context.Context, bin string, args ...string) ([]byte, error) {
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// ImportImage imports an image tarball (docker-archive or OCI layout, as
// written by WriteImage or go-containerregistry's tarball package) into the
// CRI's namespace, unpacked for the node's snapshotter. Pods then use it
// with imagePullPolicy IfNotPresent or Never.
func (n *Node) ImportImage(ctx context.Context, tarPath string) error {
	_, err := n.Ctr(ctx, "images", "import", "--no-unpack=false", tarPath)
	return err
}

func (n *Node) startKubelet(ctx context.Context, opts Options, cgroups []string) error {
	c := opts.Cluster
	n.Kubeconfig = filepath.Join(n.Dir, "kubelet.kubeconfig")
	if err := c.WriteKubeconfig(n.Kubeconfig, "https://"+n.APIServer, "system:node:"+n.Name, "system:nodes"); err != nil {
		return err
	}
	root := filepath.Join(n.Dir, "kubelet")
	cfg, err := kubeletConfig(kubeletParams{
		NodeIP:        n.IP,
		ClientCAFile:  c.CAFile,
		CgroupRoot:    "/" + CgroupName + "/" + n.Name,
		RuntimeSocket: n.ContainerdSocket,
		PodLogsDir:    filepath.Join(n.Dir, "pod-logs"),
		ResolvConf:    "/etc/resolv.conf",
		HealthzPort:   10248,
		ClusterDomain: "cluster.local",
	})
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(n.Dir, "kubelet.json")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		return err
	}
	args := append([]string{
		"--config=" + cfgPath,
		"--kubeconfig=" + n.Kubeconfig,
		"--root-dir=" + root,
		"--cert-dir=" + filepath.Join(root, "pki"),
		"--hostname-override=" + n.Name,
		"--node-ip=" + n.IP.String(),
	}, opts.KubeletArgs...)
	p, err := startProc(n.logDir(), "kubelet", n.NetnsPath(), n.Binaries.Kubelet, args, nil)
	if err != nil {
		return err
	}
	n.procs = append(n.procs, p)
	if err := joinCgroups(cgroups, p.cmd.Process.Pid); err != nil {
		return err
	}
	return poll(ctx, opts.ReadyTimeout, p, "Node "+n.Name+" Ready", func(ctx context.Context) error {
		node, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("node %s Ready=%s: %s: %s", n.Name, cond.Status, cond.Reason, cond.Message)
			}
		}
		return fmt.Errorf("node %s has no Ready condition yet", n.Name)
	})
}

// KubernetesEndpointSlice names the EndpointSlice Start adds to Service
// default/kubernetes (the API server, run with --endpoint-reconciler-type=none,
// publishes none).
const KubernetesEndpointSlice = "kubernetes-realnode"

// startKubeProxy publishes the forwarder as the kubernetes Service's
// endpoint and starts kube-proxy in the node's netns; it returns once
// kube-proxy has programmed that Service.
func (n *Node) startKubeProxy(ctx context.Context, cgroups []string) error {
	c := n.cluster
	host, portStr, err := net.SplitHostPort(n.APIServer)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return err
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: KubernetesEndpointSlice, Namespace: metav1.NamespaceDefault,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: "kubernetes",
				discoveryv1.LabelManagedBy:   "realnode.e2e.ambit.dev",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{host}, Conditions: discoveryv1.EndpointConditions{Ready: new(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: new("https"), Port: new(int32(port)), Protocol: new(corev1.ProtocolTCP)}},
	}
	slices := c.Client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault)
	if _, err := slices.Create(ctx, slice, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		_, err = slices.Update(ctx, slice, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("updating EndpointSlice default/%s: %w", KubernetesEndpointSlice, err)
		}
	} else if err != nil {
		return fmt.Errorf("creating EndpointSlice default/%s: %w", KubernetesEndpointSlice, err)
	}
	kubeconfig := filepath.Join(n.Dir, "kube-proxy.kubeconfig")
	if err := c.WriteKubeconfig(kubeconfig, "https://"+n.APIServer, "system:kube-proxy"); err != nil {
		return err
	}
	p, err := startProc(n.logDir(), "kube-proxy", n.NetnsPath(), n.Binaries.KubeProxy, []string{
		"--kubeconfig=" + kubeconfig,
		"--hostname-override=" + n.Name,
		"--proxy-mode=iptables",
		"--cluster-cidr=" + clusterPodCIDR.String(),
		// conntrack limits are host-wide: leave them alone.
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256",
	}, nil)
	if err != nil {
		return err
	}
	n.procs = append(n.procs, p)
	if err := joinCgroups(cgroups, p.cmd.Process.Pid); err != nil {
		return err
	}
	svc, err := c.Client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading Service default/kubernetes: %w", err)
	}
	vip := svc.Spec.ClusterIP
	ns, err := netns.OpenName(n.Netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	return poll(ctx, time.Minute, p, "kube-proxy routing the kubernetes Service ("+vip+":443) from the node", func(ctx context.Context) error {
		conn, err := netns.DialIn(ctx, ns, "tcp", net.JoinHostPort(vip, "443"))
		if err != nil {
			return err
		}
		return conn.Close()
	})
}

// clusterPodCIDR covers every node's PodCIDR.
var clusterPodCIDR = netip.MustParsePrefix("10.247.0.0/16")

// crictlUsable reports whether containerd runs (started and not exited).
func (n *Node) crictlUsable() bool {
	for _, p := range n.procs {
		if p.name == "containerd" {
			return !p.exited()
		}
	}
	return false
}

// poll calls check every 200ms until it succeeds, p exits, ctx ends or
// timeout passes.
func poll(ctx context.Context, timeout time.Duration, p *proc, what string, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		last := check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before %s: %v", p.name, what, p.err)
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last check: %v)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// startFailure decorates a start error with the daemons' log tails.
func (n *Node) startFailure(err error) error {
	var b strings.Builder
	fmt.Fprintf(&b, "starting real node %s: %v", n.Name, err)
	for _, p := range n.procs {
		state := "running"
		if p.exited() {
			state = fmt.Sprintf("exited: %v", p.err)
		}
		fmt.Fprintf(&b, "\n  %s (%s), last lines of %s:\n%s", p.name, state, p.logPath, p.tail(30))
	}
	b.WriteString("\n  what to do: read the logs above; set " + cluster.EnvKeep + "=1 to keep " + n.Dir)
	return errors.New(b.String())
}

// Stop stops kubelet and containerd, kills every process left in the node's
// cgroups (shims, containers), unmounts what they mounted, deletes the
// netns, the host link, the cgroups and the directories (Dir is kept on
// request), deletes the Node object, and restores the kernel tunables when
// no other node runs. Safe to call more than once.
func (n *Node) Stop() error {
	n.stopOnce.Do(func() {
		var errs []error
		if n.crictlUsable() {
			// Pods removed through the CRI get CNI DEL (their CNI chain
			// sees the deletion) and their netns deleted.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if out, err := n.Crictl(ctx, "rmp", "--all", "--force"); err != nil {
				slog.Warn("realnode: removing pods through the CRI before the kill", "node", n.Name, "error", err, "output", string(out))
			}
			cancel()
		}
		for i := len(n.procs) - 1; i >= 0; i-- {
			if err := n.procs[i].stop(5 * time.Second); err != nil {
				errs = append(errs, err)
			}
		}
		if n.fwd != nil {
			n.fwd.Close()
		}
		if err := teardown(n.Name, n.keep); err != nil {
			errs = append(errs, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := n.cluster.Client.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting Node %s: %w", n.Name, err))
		}
		err := n.cluster.Client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).Delete(ctx, KubernetesEndpointSlice, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting EndpointSlice default/%s: %w", KubernetesEndpointSlice, err))
		}
		n.stopErr = errors.Join(errs...)
		n.lock.Close()
	})
	return n.stopErr
}

// LockPath is the machine-wide lock a running node holds.
const LockPath = "/run/ambtn.lock"

// lockMachine takes LockPath, waiting (with a line of progress) while
// another node holds it, until ctx ends. Closing the file releases it; so
// does the process's exit.
func lockMachine(ctx context.Context, progress io.Writer) (*os.File, error) {
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("realnode: opening the node lock %s: %w", LockPath, err)
	}
	said := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("realnode: locking %s: %w", LockPath, err)
		}
		if !said {
			fmt.Fprintf(progress, "realnode: another real node runs on this machine; waiting for it to stop (%s)\n", LockPath)
			said = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("realnode: waiting for the node lock %s: %w", LockPath, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
