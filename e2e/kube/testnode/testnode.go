package testnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/ambit-mesh/ambit/ctl/local"
	"github.com/ambit-mesh/ambit/pkg/netns"
)

// Names and addresses of the test nodes' network.
const (
	NetnsPrefix   = "ambitk-"
	BackboneNetns = NetnsPrefix + "net"
	Bridge        = "br0"
	// NetworkName is the CNI network of every node's conflist.
	NetworkName = "ambit-kube"
	// ConflistName is the conflist file in NetD(node).
	ConflistName = "10-ambit-kube.conflist"
	// APIServerPort is the forwarder's port on BackboneIP.
	APIServerPort = 6443
	// APIServerName is the name kubeconfigs of in-node processes verify the
	// API server's certificate against.
	APIServerName = "localhost"
	maxNodes      = 100
)

// Addresses of the test nodes' network.
var (
	BackboneIP     = netip.MustParseAddr("172.31.0.1")
	BackboneSubnet = netip.MustParsePrefix("172.31.0.0/24")
	PodCIDRs       = netip.MustParsePrefix("10.245.0.0/16")
)

// NodeNetns is the network namespace of a node.
func NodeNetns(node string) string { return NetnsPrefix + "node-" + node }

// Options configure Start.
type Options struct {
	// Client is an admin client of the cluster (required).
	Client kubernetes.Interface
	// APIServer is the API server's host:port on the host's loopback
	// (required): what the forwarder dials.
	APIServer string
	// CAFile is the cluster CA, for Kubeconfig (required).
	CAFile string
	// Nodes are the node names (required, at most 100).
	Nodes []string
	// Dir is a working directory this package owns (required): per-node
	// CNI config, IPAM data and CNI cache, kubeconfigs, logs.
	Dir string
	// CNIBinDir holds bridge and host-local (required); the nodes'
	// cni-agents install ambit-cni there.
	CNIBinDir string
	// BinDir is searched first for pod commands.
	BinDir string
	// Logger; discards if nil.
	Logger *slog.Logger
}

// Nodes is a running set of test nodes. Its methods are safe for
// concurrent use; call Stop exactly once (more calls are no-ops).
type Nodes struct {
	opts Options
	log  *slog.Logger
	// ctx ends at Stop: the pod loop and forwarded connections end with it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	fwd    net.Listener
	// extraFwd are Forward's listeners, closed at Stop.
	extraFwd []net.Listener

	mu       sync.Mutex
	pods     map[string]*runningPod // by namespace/name
	procs    []local.Proc           // Launch'ed, stopped at Stop
	stopped  bool
	stopErr  error
	nodeIdx  map[string]int
	stopOnce sync.Once
	// cgroupRoot is the hierarchy of the pods' cgroups (see PodCgroup).
	cgroupRoot string
}

// Start cleans leftovers of the prefix, builds the network, writes each
// node's conflist, creates the Node objects, starts the API server
// forwarder and the pod loop. On error everything is undone.
func Start(ctx context.Context, opts Options) (*Nodes, error) {
	switch {
	case opts.Client == nil, opts.APIServer == "", opts.CAFile == "", opts.Dir == "", opts.CNIBinDir == "":
		return nil, errors.New("testnode: Options.Client, APIServer, CAFile, Dir and CNIBinDir are required")
	case len(opts.Nodes) == 0 || len(opts.Nodes) > maxNodes:
		return nil, fmt.Errorf("testnode: %d nodes; want 1 to %d", len(opts.Nodes), maxNodes)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Nodes{opts: opts, log: log, pods: map[string]*runningPod{}, nodeIdx: map[string]int{}}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	for i, name := range opts.Nodes {
		n.nodeIdx[name] = i
	}
	if err := Cleanup(); err != nil {
		return nil, fmt.Errorf("removing leftovers of an earlier run: %w", err)
	}
	if err := n.start(ctx); err != nil {
		return nil, errors.Join(err, n.Stop())
	}
	return n, nil
}

func (n *Nodes) start(ctx context.Context) error {
	root, err := cgroupRoot()
	if err != nil {
		return err
	}
	n.cgroupRoot = root
	if err := local.CreateBridgeNetns(BackboneNetns, Bridge, netip.PrefixFrom(BackboneIP, BackboneSubnet.Bits())); err != nil {
		return err
	}
	for i, name := range n.opts.Nodes {
		var routes []local.Route
		for j := range n.opts.Nodes {
			if j != i {
				routes = append(routes, local.Route{Dst: PodCIDR(j), Via: NodeIP(j)})
			}
		}
		if err := local.CreateNodeNetns(NodeNetns(name), BackboneNetns, Bridge, fmt.Sprintf("vk%d", i),
			netip.PrefixFrom(NodeIP(i), BackboneSubnet.Bits()), routes); err != nil {
			return err
		}
		if err := os.MkdirAll(n.NetD(name), 0o755); err != nil {
			return err
		}
		conf := local.NodeConflist(NetworkName, PodCIDR(i), n.nodeDir(name, "ipam"))
		if err := os.WriteFile(filepath.Join(n.NetD(name), ConflistName), conf, 0o644); err != nil {
			return err
		}
	}
	if err := n.startForwarder(ctx); err != nil {
		return err
	}
	if err := n.createNodes(ctx); err != nil {
		return err
	}
	return n.runPods(ctx)
}

// Cleanup stops the processes in every namespace with the prefix and
// deletes those namespaces, and kills the processes in CgroupParent and
// removes it: leftovers of a crashed run. Start and Stop call it.
func Cleanup() error {
	names, err := netns.List(NetnsPrefix)
	if err != nil || len(names) == 0 {
		return errors.Join(err, cleanupCgroups())
	}
	ids := map[netns.ID]bool{}
	for _, name := range names {
		if id, err := netns.IDOfPath(netns.Path(name)); err == nil {
			ids[id] = true
		}
	}
	local.StopProcs(local.ProcsInNetns(ids), 5*time.Second)
	var errs []error
	// Pods first, then nodes (their veths go with them), the backbone last.
	slices.SortFunc(names, func(a, b string) int { return rank(a) - rank(b) })
	for _, name := range names {
		errs = append(errs, netns.Delete(name))
	}
	errs = append(errs, cleanupCgroups())
	return errors.Join(errs...)
}

func rank(name string) int {
	switch {
	case name == BackboneNetns:
		return 2
	case len(name) > len(NetnsPrefix+"node-") && name[:len(NetnsPrefix+"node-")] == NetnsPrefix+"node-":
		return 1
	}
	return 0
}

// Stop stops the pod loop, tears every pod down (process, CNI DEL, netns)
// without deleting the pod objects, stops the processes started with
// Launch, deletes the Node objects and removes the network. Safe after a
// failed Start and more than once.
func (n *Nodes) Stop() error {
	n.stopOnce.Do(func() {
		n.cancel()
		if n.fwd != nil {
			n.fwd.Close()
		}
		n.mu.Lock()
		extra := n.extraFwd
		n.extraFwd = nil
		n.mu.Unlock()
		for _, ln := range extra {
			ln.Close()
		}
		n.wg.Wait()
		n.mu.Lock()
		n.stopped = true
		pods := n.pods
		n.pods = map[string]*runningPod{}
		procs := n.procs
		n.procs = nil
		n.mu.Unlock()
		var errs []error
		for _, rp := range pods {
			errs = append(errs, n.teardown(context.Background(), rp))
		}
		local.StopProcs(procs, 5*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, name := range n.opts.Nodes {
			if err := n.opts.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("deleting Node %s: %w", name, err))
			}
		}
		errs = append(errs, Cleanup())
		n.stopErr = errors.Join(errs...)
	})
	return n.stopErr
}

// NodeIP is node i's address on the backbone: 172.31.0.(10+i).
func NodeIP(i int) netip.Addr {
	b := BackboneIP.As4()
	b[3] = byte(10 + i)
	return netip.AddrFrom4(b)
}

// PodCIDR is node i's pod range: 10.245.i.0/24.
func PodCIDR(i int) netip.Prefix {
	b := PodCIDRs.Addr().As4()
	b[2] = byte(i)
	return netip.PrefixFrom(netip.AddrFrom4(b), 24)
}

// APIServerAddr is where processes in the nodes and the backbone reach the
// API server (through the forwarder).
func (n *Nodes) APIServerAddr() string {
	return netip.AddrPortFrom(BackboneIP, APIServerPort).String()
}

// IP returns a node's backbone address.
func (n *Nodes) IP(node string) netip.Addr { return NodeIP(n.nodeIdx[node]) }

// NetD is a node's CNI config dir (the cni-agent's --cni-conf-dir).
func (n *Nodes) NetD(node string) string { return n.nodeDir(node, "net.d") }

// NodeDir is a directory for a node's files (sockets, tokens), created.
func (n *Nodes) NodeDir(node string) string {
	d := n.nodeDir(node, "")
	_ = os.MkdirAll(d, 0o755)
	return d
}

func (n *Nodes) nodeDir(node, sub string) string {
	return filepath.Join(n.opts.Dir, "nodes", node, sub)
}

// LogPath is the log file of a process Launch started, or of a pod
// ("pod-<namespace>-<name>").
func (n *Nodes) LogPath(name string) string { return filepath.Join(n.opts.Dir, "logs", name+".log") }

// Kubeconfig writes a kubeconfig for processes inside the nodes: server
// APIServerAddr, tls-server-name APIServerName, the cluster CA, and the
// bearer token in tokenFile (re-read by client-go when it changes). It
// returns its path.
func (n *Nodes) Kubeconfig(name, tokenFile string) (string, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{
		Server:               "https://" + n.APIServerAddr(),
		CertificateAuthority: n.opts.CAFile,
		TLSServerName:        APIServerName,
	}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{TokenFile: tokenFile}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "user"}
	cfg.CurrentContext = "test"
	path := filepath.Join(n.opts.Dir, "kubeconfigs", name+".kubeconfig")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	return path, clientcmd.WriteToFile(*cfg, path)
}

// Launch starts bin in a node's network namespace (node "" means the
// backbone), output to LogPath(name). Stop stops it; so does StopProc.
func (n *Nodes) Launch(node, name, bin string, args, env []string) (local.Proc, error) {
	ns := BackboneNetns
	if node != "" {
		if _, ok := n.nodeIdx[node]; !ok {
			return local.Proc{}, fmt.Errorf("no test node %q", node)
		}
		ns = NodeNetns(node)
	}
	p, _, err := local.Launch(ns, bin, args, env, n.LogPath(name))
	if err != nil {
		return local.Proc{}, err
	}
	p.Name, p.Node = name, node
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		local.StopProcs([]local.Proc{p}, time.Second)
		return local.Proc{}, errors.New("test nodes stopped")
	}
	n.procs = append(n.procs, p)
	return p, nil
}

// StopProc stops a process Launch started (SIGTERM, then SIGKILL after
// grace) and forgets it.
func (n *Nodes) StopProc(p local.Proc, grace time.Duration) {
	local.StopProcs([]local.Proc{p}, grace)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.procs = slices.DeleteFunc(n.procs, func(q local.Proc) bool { return q.PID == p.PID && q.StartTime == p.StartTime })
}

// startForwarder listens in the backbone at APIServerAddr and relays each
// connection to the API server on the host's loopback.
func (n *Nodes) startForwarder(ctx context.Context) error {
	ln, err := n.forward(ctx, n.APIServerAddr(), n.opts.APIServer)
	if err != nil {
		return fmt.Errorf("API server forwarder: %w", err)
	}
	n.fwd = ln
	return nil
}

// Forward makes a TCP server of the host's network namespace (e.g. one on
// the host's loopback, like the API server's) reachable from the nodes: it
// listens in the backbone at listen (an address on BackboneIP, e.g.
// "172.31.0.1:15012") and relays each connection to target, dialed from
// the host, as the API server forwarder does. It runs until Stop.
func (n *Nodes) Forward(ctx context.Context, listen, target string) error {
	ln, err := n.forward(ctx, listen, target)
	if err != nil {
		return fmt.Errorf("forwarder %s -> %s: %w", listen, target, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		ln.Close()
		return errors.New("test nodes stopped")
	}
	n.extraFwd = append(n.extraFwd, ln)
	return nil
}

// forward listens in the backbone at listen and relays each connection to
// target until the listener closes; n.wg tracks it.
func (n *Nodes) forward(ctx context.Context, listen, target string) (net.Listener, error) {
	bb, err := netns.OpenName(BackboneNetns)
	if err != nil {
		return nil, err
	}
	defer bb.Close()
	ln, err := netns.ListenIn(ctx, bb, "tcp", listen)
	if err != nil {
		return nil, err
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				n.relay(c, target)
			}()
		}
	}()
	return ln, nil
}

// relay copies both ways between an accepted connection and target until
// either side closes or the forwarder stops.
func (n *Nodes) relay(c net.Conn, target string) {
	defer c.Close()
	var d net.Dialer
	up, err := d.Dial("tcp", target)
	if err != nil {
		n.log.Warn("forwarder: dialing", "target", target, "err", err)
		return
	}
	defer up.Close()
	stop := context.AfterFunc(n.ctx, func() { c.Close(); up.Close() })
	defer stop()
	errc := make(chan error, 2)
	go func() { _, err := io.Copy(up, c); errc <- err }()
	go func() { _, err := io.Copy(c, up); errc <- err }()
	<-errc
}
