package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/pkg/version"
	"github.com/ambit-mesh/ambit/pkg/zds"
	"github.com/ambit-mesh/ambit/ztunnel/admin"
	"github.com/ambit-mesh/ambit/ztunnel/identity"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
	"github.com/ambit-mesh/ambit/ztunnel/limit"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
	"github.com/ambit-mesh/ambit/ztunnel/xds"
)

// addrs are where the HTTP endpoints listen, reported to run's ready hook.
type addrs struct {
	Metrics, Readiness, Admin net.Addr
}

// run serves until ctx ends, then stops every pod proxy and endpoint and
// returns nil. ready, if not nil, is called once the endpoints listen.
func run(ctx context.Context, cfg Config, log *slog.Logger, ready func(addrs)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	fileRoots, err := loadRoots(cfg.CARoot)
	if err != nil {
		return err
	}
	store := state.New(state.Options{TrustDomain: cfg.TrustDomain, Logger: log})
	readiness := admin.NewReadiness(admin.CondState, admin.CondCA, admin.CondZDS)
	met := metrics.New()

	ca, err := identity.NewCAClient(identity.CAClientOptions{
		Address: cfg.CAAddr, ServerName: cfg.CAServerName, RootCAFile: cfg.CARoot,
		Token: identity.FileToken(cfg.TokenFile), CertTTL: cfg.CertTTL, ClusterID: cfg.ClusterID,
	})
	if err != nil {
		return fmt.Errorf("CA client for %s: %w", cfg.CAAddr, err)
	}
	defer ca.Close()
	certs, err := identity.New(ctx, identity.Options{Source: ca, Logger: log})
	if err != nil {
		return fmt.Errorf("certificate manager: %w", err)
	}
	defer certs.Close()
	readiness.Set(admin.CondCA, nil)
	var fetchedOnce sync.Once
	var caReached atomic.Bool
	// prefetch fetches a new pod's certificate so it is ready before the
	// first connection. A refusal (the CA may not know the pod yet) is
	// retried with backoff for up to prefetchFor, so readiness recovers
	// without waiting for another pod.
	prefetch := func(id spiffe.ID) {
		backoff := 100 * time.Millisecond
		until := time.Now().Add(prefetchFor)
		for {
			fctx, fcancel := context.WithTimeout(ctx, identity.DefaultFetchTimeout)
			_, err := certs.GetCertificate(fctx, id)
			fcancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			log.Warn("fetching a pod's certificate failed", "identity", id.String(), "error", err, "retry_in", backoff)
			// Readiness says whether the CA was ever reached: once one
			// certificate came, a refusal for one pod (the CA may not
			// know it yet) does not make the node's ztunnel unready.
			// A PermissionDenied is the CA's answer about this pod: the CA
			// is reached.
			if status.Code(err) == codes.PermissionDenied {
				caReached.Store(true)
				readiness.Set(admin.CondCA, nil)
			} else if !caReached.Load() {
				readiness.Set(admin.CondCA, fmt.Errorf("no certificate from CA %s yet: %w", cfg.CAAddr, err))
			}
			if time.Now().Add(backoff).After(until) {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
		}
		caReached.Store(true)
		fetchedOnce.Do(func() { log.Info("CA reachable: first certificate fetched", "identity", id.String()) })
		readiness.Set(admin.CondCA, nil)
	}

	applyMemoryLimit(cfg.MemoryLimit, log)
	node, limits := nodeLimits(cfg.Limits, log)
	foreign := metrics.NewForeignListeners(met.Registry())
	pods := inpod.New(inpod.Config{
		DrainTimeout: cfg.DrainTimeout,
		Proxy: proxy.Config{
			Node: cfg.Node, TrustDomain: cfg.TrustDomain, State: store, Certs: certs,
			TrustBundle: trustBundle(fileRoots, certs.Roots), Metrics: met, Logger: log,
			Own:            ownEndpoints(cfg),
			Sockets:        proxy.NewOwnSockets(),
			OutboundLimits: limits, InboundLimits: limits,
			NodeLimiter: node,
		},
		Store:      store,
		Identities: certs,
		Prefetch:   prefetch,
		OnSnapshot: func() { readiness.Set(admin.CondZDS, nil) },
		OnForeignListener: func(p proxy.Pod, port, n int) {
			foreign.Set(p.Name, p.Namespace, port, n)
		},
		Logger: log,
	})
	readiness.Set(admin.CondZDS, errors.New("ZDS snapshot from the node agent at "+cfg.ZDSSocket+" not processed yet"))
	if cfg.LocalConfig != "" {
		readiness.Set(admin.CondState, errors.New("local config "+cfg.LocalConfig+" not loaded yet"))
	} else {
		readiness.Set(admin.CondState, errors.New("workload xDS from "+cfg.XDSAddr+" not synced yet"))
	}
	var xc *xds.Client
	if cfg.LocalConfig == "" {
		nodeID, nodeMD := xdsNode(cfg)
		xc, err = xds.New(xds.Options{
			Address: cfg.XDSAddr, ServerName: cfg.CAServerName, RootCAFile: cfg.CARoot,
			Token:  identity.FileToken(cfg.TokenFile),
			NodeID: nodeID, NodeMetadata: nodeMD, ClusterID: cfg.ClusterID,
			Store: store, Logger: log,
		})
		if err != nil {
			return fmt.Errorf("xDS client for %s: %w", cfg.XDSAddr, err)
		}
		defer xc.Close()
	}
	zc, err := zds.NewClient(zds.ClientConfig{Path: cfg.ZDSSocket, Handler: pods, Logger: log})
	if err != nil {
		return fmt.Errorf("ZDS client: %w", err)
	}

	type endpoint struct {
		name, addr string
		h          http.Handler
	}
	eps := []endpoint{
		{"metrics", cfg.MetricsAddr, metricsMux(met)},
		{"readiness", cfg.ReadinessAddr, admin.ReadinessHandler(readiness)},
		{"admin", cfg.AdminAddr, admin.Handler(admin.Sources{
			State: store.Dump, Certificates: certs.Certificates, Pods: pods.Pods,
			Info: map[string]string{"node": cfg.Node, "trustDomain": cfg.TrustDomain, "caAddr": cfg.CAAddr, "localConfig": cfg.LocalConfig, "xdsAddr": cfg.XDSAddr},
		})},
	}
	var servers []*http.Server
	var bound []net.Addr
	for _, ep := range eps {
		ln, err := net.Listen("tcp", ep.addr)
		if err != nil {
			for _, s := range servers {
				s.Close()
			}
			return fmt.Errorf("listening for %s on %s: %w", ep.name, ep.addr, err)
		}
		srv := &http.Server{Handler: ep.h, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, srv)
		bound = append(bound, ln.Addr())
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("endpoint stopped", "endpoint", ep.name, "error", err)
			}
		}()
	}

	var wg sync.WaitGroup
	var loaded sync.Once
	// stateLoaded closes once the first full state is in: only then does
	// ztunnel ask the node agent for pods, so it never takes a pod's
	// connections (from a predecessor, on a rolling update) before it knows
	// where they go.
	stateLoaded := make(chan struct{})
	wg.Add(3)
	if xc != nil {
		// The client keeps the last good state in the store while istiod
		// is unreachable; readiness stays once the first full state is in.
		go func() { defer wg.Done(); _ = xc.Run(ctx) }()
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-xc.Synced():
				log.Info("workload xDS synced", "xds", cfg.XDSAddr)
				readiness.Set(admin.CondState, nil)
				close(stateLoaded)
			case <-ctx.Done():
			}
		}()
	} else {
		go func() {
			defer wg.Done()
			_ = state.Watch(ctx, cfg.LocalConfig, store, state.WatchOptions{Logger: log, Reloaded: func(err error) {
				if err == nil {
					loaded.Do(func() { readiness.Set(admin.CondState, nil); close(stateLoaded) })
					return
				}
				if store.Load().Version() == 0 {
					readiness.Set(admin.CondState, err)
				}
			}})
		}()
	}
	go func() { defer wg.Done(); pods.Run(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); reclaimMemory(ctx, time.Second, 8<<20, log) }()
	go func() {
		defer wg.Done()
		select {
		case <-stateLoaded:
			_ = zc.Run(ctx)
		case <-ctx.Done():
		}
	}()
	log.Info("ztunnel started", "zds_socket", cfg.ZDSSocket, "ca", cfg.CAAddr, "local_config", cfg.LocalConfig, "xds", cfg.XDSAddr,
		"metrics", bound[0].String(), "readiness", bound[1].String(), "admin", bound[2].String())
	if ready != nil {
		ready(addrs{Metrics: bound[0], Readiness: bound[1], Admin: bound[2]})
	}

	<-ctx.Done()
	wg.Wait()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	log.Info("ztunnel stopped")
	return nil
}

// nodeLimits bounds the node's connections by ztunnel's descriptor
// budget: a connection holds up to two descriptors (client and upstream),
// and a fifth of the budget stays for everything else (xDS, CA, listeners
// of every pod, endpoints), so no pod can make ztunnel run out of files.
// One party's open connections are capped at three quarters of the node's,
// so the others always keep a share.
func nodeLimits(party limit.Config, log *slog.Logger) (*limit.Limiter, limit.Config) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY || rl.Cur > 1<<30 {
		return nil, party
	}
	maxOpen := int(rl.Cur) * 2 / 5
	if share := maxOpen * 3 / 4; party.MaxOpen == 0 || party.MaxOpen > share {
		party.MaxOpen = share
	}
	log.Info("connection budget", "open_files_limit", rl.Cur, "node_max_connections", maxOpen,
		"per_party_max_open", party.MaxOpen, "per_party_max_in_progress", party.MaxInProgress, "per_party_rate", party.Rate)
	return limit.NewChild(nil, "node", limit.Config{MaxOpen: maxOpen}), party
}

// prefetchFor bounds how long a new pod's certificate is retried before
// its first connection asks again.
const prefetchFor = time.Minute

// ownEndpoints are ztunnel's listeners, which no connection is forwarded
// to: the in-pod ports, and its endpoints' ports at its own addresses.
func ownEndpoints(cfg Config) proxy.OwnEndpoints {
	own := proxy.DefaultOwnEndpoints(proxy.LocalAddrs(30 * time.Second))
	own.NodePorts = nil
	for _, a := range []string{cfg.AdminAddr, cfg.MetricsAddr, cfg.ReadinessAddr} {
		if _, p, err := net.SplitHostPort(a); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err == nil && n != 0 {
				own.NodePorts = append(own.NodePorts, uint16(n))
			}
		}
	}
	return own
}

func metricsMux(m *metrics.Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(metrics.Path, m.Handler())
	return mux
}

// loadRoots reads the --ca-root PEM file.
func loadRoots(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading --%s: %w", FlagCARoot, err)
	}
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("--%s %s: parsing a certificate: %w", FlagCARoot, path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("--%s %s: no PEM certificate in the file; point it at the mesh root (root-cert.pem)", FlagCARoot, path)
	}
	return certs, nil
}

// trustBundle returns the HBONE trust bundle: the --ca-root certificates
// plus the roots of the certificates the manager holds. The union is
// rebuilt only when the manager's pool changes.
func trustBundle(file []*x509.Certificate, managerRoots func() *x509.CertPool) func() *x509.CertPool {
	var (
		mu       sync.Mutex
		lastBase *x509.CertPool
		union    *x509.CertPool
	)
	return func() *x509.CertPool {
		base := managerRoots()
		mu.Lock()
		defer mu.Unlock()
		if union != nil && base == lastBase {
			return union
		}
		var p *x509.CertPool
		if base != nil {
			p = base.Clone()
		} else {
			p = x509.NewCertPool()
		}
		for _, c := range file {
			p.AddCert(c)
		}
		lastBase, union = base, p
		return union
	}
}

// xdsNode returns the node ID and metadata ztunnel presents to istiod, in
// the form Istio's ztunnel uses and Istio's istiod requires: four
// '~'-separated parts with a valid IP ("ztunnel~<ip>~<pod>.<ns>~<ns>.svc.
// cluster.local"; istiod refuses the stream otherwise), and the metadata
// NAME, NAMESPACE, NODE_NAME, CLUSTER_ID, INSTANCE_IPS. Without
// cfg.PodIP, the first global unicast address of the host's interfaces is
// used (a host-network ztunnel's pod IP is its node's).
func xdsNode(cfg Config) (string, map[string]string) {
	ip := cfg.PodIP
	if ip == "" {
		ip = "127.0.0.1"
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok && n.IP.IsGlobalUnicast() {
					ip = n.IP.String()
					break
				}
			}
		}
	}
	id := fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", ip, cfg.PodName, cfg.PodNamespace, cfg.PodNamespace)
	return id, map[string]string{
		"NAME": cfg.PodName, "NAMESPACE": cfg.PodNamespace, "NODE_NAME": cfg.Node,
		"CLUSTER_ID": cfg.ClusterID, "INSTANCE_IPS": ip, "ISTIO_VERSION": version.Version,
	}
}
