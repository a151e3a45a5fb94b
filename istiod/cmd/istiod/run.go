package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/istiod/ambient"
	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/istiod/ca/casecret"
	"github.com/ambit-mesh/ambit/istiod/ca/kubeauth"
	"github.com/ambit-mesh/ambit/istiod/config"
	"github.com/ambit-mesh/ambit/istiod/config/kube"
	"github.com/ambit-mesh/ambit/istiod/rootcert"
	"github.com/ambit-mesh/ambit/istiod/xds"
	"github.com/ambit-mesh/ambit/pkg/syncz"
)

// shutdownGrace bounds the graceful stop of the gRPC server (xDS streams
// never end on their own; they are cut after it).
const shutdownGrace = 5 * time.Second

// caLoadTimeout bounds reading (or creating) the root kept in the CA
// Secret, retries of transient API errors included.
const caLoadTimeout = 2 * time.Minute

// Kubernetes client rate limits: one LIST per informer at start and a
// TokenReview per new caller; client-go's default of 5 QPS is too low for
// a node fleet renewing certificates.
const (
	kubeQPS   = 50
	kubeBurst = 100
)

// addrs are where istiod listens, reported to run's ready hook.
type addrs struct {
	GRPC, Readiness net.Addr
}

// run starts the CA, the config source and the workload xDS server, and
// serves until ctx ends, then stops gracefully and returns nil. ready, if
// not nil, is called once the root certificate is written and both
// listeners are open (before the first config is pushed).
func run(ctx context.Context, cfg Config, log *slog.Logger, ready func(addrs)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		kc  *kubeClients
		err error
	)
	if cfg.ConfigSource == SourceKubernetes {
		if kc, err = newKubeClients(cfg); err != nil {
			return err
		}
	}
	caOpts := ca.Options{TrustDomain: cfg.TrustDomain, CADir: cfg.CADir, StateDir: cfg.StateDir, Logger: log}
	if cfg.CASecret != "" {
		caOpts.RootStore = casecret.New(kc.core.CoreV1().Secrets(cfg.Namespace), cfg.Namespace, cfg.CASecret)
	}
	caCtx, caCancel := context.WithTimeout(ctx, caLoadTimeout)
	auth, err := ca.LoadOrCreateContext(caCtx, caOpts)
	caCancel()
	if err != nil {
		return err
	}
	var (
		authns chain
		tokens *ca.StaticTokens
	)
	if cfg.TokenFile != "" {
		if tokens, err = ca.LoadStaticTokens(cfg.TokenFile, cfg.TrustDomain); err != nil {
			return err
		}
		authns = append(authns, tokens)
	}

	var (
		src     config.Source
		pods    ca.NodePods
		dirPods *snapshotPods
	)
	switch cfg.ConfigSource {
	case SourceKubernetes:
		ks, ka, err := kubernetesSource(cfg, kc, log)
		if err != nil {
			return err
		}
		src, pods = ks, ks
		authns = append(authns, ka)
	case SourceDir:
		src = config.NewDirSource(cfg.ConfigDir, log)
		dirPods = &snapshotPods{}
		pods = dirPods
	}
	if tokens != nil && tokens.HasNodes() {
		if pods == nil {
			return fmt.Errorf("--%s %s has node entries (a node's ztunnel), but --%s %s gives istiod no pods to authorize them by; use --%s %s or %s",
				FlagTokenFile, cfg.TokenFile, FlagConfigSource, cfg.ConfigSource, FlagConfigSource, SourceDir, SourceKubernetes)
		}
		tokens.SetNodePods(pods)
	}

	caSrv, err := ca.NewServer(auth, authns, ca.ServerOptions{DefaultTTL: cfg.CertTTL, MaxTTL: cfg.MaxCertTTL, Logger: log})
	if err != nil {
		return err
	}
	xdsSrv, err := xds.New(xds.Options{Logger: log, Authorize: authorizeStream(authns), AuthorizeNode: authorizeStreamNode(authns)})
	if err != nil {
		return err
	}
	tlsConf, err := auth.ServingTLSConfig(cfg.ServingDNS, cfg.ServingIPs)
	if err != nil {
		return err
	}
	if cfg.RootCertOut != "" {
		if err := ca.WriteFileAtomic(cfg.RootCertOut, auth.RootsPEM(), 0o644); err != nil {
			return fmt.Errorf("writing root certificate: %w", err)
		}
	}

	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsConf)),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	caSrv.Register(gs)
	if src != nil {
		xdsSrv.Register(gs)
	}
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.GRPCAddr, err)
	}
	var isReady atomic.Bool
	readyLis, err := net.Listen("tcp", cfg.ReadinessAddr)
	if err != nil {
		lis.Close()
		return fmt.Errorf("listening for %s on %s: %w", ReadyPath, cfg.ReadinessAddr, err)
	}
	readySrv := &http.Server{Handler: readinessHandler(&isReady, cfg.ConfigSource, xdsSrv), ReadHeaderTimeout: 10 * time.Second}

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := gs.Serve(lis); err != nil {
			errc <- fmt.Errorf("serving gRPC on %s: %w", lis.Addr(), err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := readySrv.Serve(readyLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serving %s on %s: %w", ReadyPath, readyLis.Addr(), err)
		}
	}()
	if kc != nil {
		rc, err := rootcert.New(rootcert.Options{Client: kc.core, RootPEM: auth.RootsPEM(), Logger: log})
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := rc.Run(ctx); err != nil {
				errc <- err
			}
		}()
	}
	if src != nil {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := src.Run(ctx); err != nil {
				errc <- fmt.Errorf("config source %s: %w", cfg.ConfigSource, err)
			}
		}()
		opts := ambient.Options{TrustDomain: cfg.TrustDomain, Tunnel: cfg.Tunnel, AuditPolicies: cfg.AuditPolicies}
		go func() {
			defer wg.Done()
			pushLoop(ctx, src, opts, xdsSrv, dirPods, log, func() { isReady.Store(true) })
		}()
	} else {
		log.Warn("no config source: serving the CA only, no workload discovery",
			"fix", fmt.Sprintf("--%s %s or --%s %s", FlagConfigSource, SourceKubernetes, FlagConfigSource, SourceDir))
		isReady.Store(true)
	}
	log.Info("serving certificates", "addr", lis.Addr().String(), "readiness", readyLis.Addr().String(),
		"config_source", cfg.ConfigSource, "trust_domain", cfg.TrustDomain,
		"cert_ttl", cfg.CertTTL, "max_cert_ttl", cfg.MaxCertTTL, "root_cert_out", cfg.RootCertOut)
	if ready != nil {
		ready(addrs{GRPC: lis.Addr(), Readiness: readyLis.Addr()})
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		cancel()
	}
	isReady.Store(false)
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	t := time.NewTimer(shutdownGrace)
	select {
	case <-stopped:
	case <-t.C:
		gs.Stop()
		<-stopped
	}
	t.Stop()
	sctx, scancel := context.WithTimeout(context.Background(), shutdownGrace)
	_ = readySrv.Shutdown(sctx)
	scancel()
	wg.Wait()
	if runErr != nil {
		return runErr
	}
	log.Info("stopped")
	return nil
}

// kubeClients are istiod's clients of the API server.
type kubeClients struct {
	host  string
	core  kubernetes.Interface
	istio istioclient.Interface
}

func newKubeClients(cfg Config) (*kubeClients, error) {
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		if cfg.Kubeconfig == "" {
			return nil, fmt.Errorf("in-cluster Kubernetes config (no --%s): %w", FlagKubeconfig, err)
		}
		return nil, fmt.Errorf("--%s %s: %w", FlagKubeconfig, cfg.Kubeconfig, err)
	}
	restCfg.QPS, restCfg.Burst = kubeQPS, kubeBurst
	restCfg.UserAgent = "ambit-istiod"
	kc, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", restCfg.Host, err)
	}
	ic, err := istioclient.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("istio client for %s: %w", restCfg.Host, err)
	}
	return &kubeClients{host: restCfg.Host, core: kc, istio: ic}, nil
}

// kubernetesSource builds the informer source and the TokenReview
// authenticator reading its pod cache.
func kubernetesSource(cfg Config, kc *kubeClients, log *slog.Logger) (*kube.Source, *kubeauth.Authenticator, error) {
	src := kube.New(kc.core, kc.istio, kube.Options{Logger: log})
	ka, err := kubeauth.New(kubeauth.Options{
		Reviews: kc.core.AuthenticationV1().TokenReviews(), Pods: src,
		ZtunnelServiceAccount: cfg.ZtunnelSA, Audiences: cfg.TokenAudiences, Logger: log,
	})
	if err != nil {
		return nil, nil, err
	}
	log.Info("watching Kubernetes", "server", kc.host, "kubeconfig", cfg.Kubeconfig, "ztunnel_sa", cfg.ZtunnelSA, "token_audiences", cfg.TokenAudiences)
	return src, ka, nil
}

// pushLoop rebuilds the workload API resources on every config change and
// hands them to the xDS server. Build errors are logged when they first
// appear (not again while they persist). first is called after the first
// push. pods, if not nil, is set to each snapshot before it is built, so
// that node authorization reads the pods istiod serves.
func pushLoop(ctx context.Context, src config.Source, opts ambient.Options, x *xds.Server, pods *snapshotPods, log *slog.Logger, first func()) {
	seen := map[string]bool{}
	pushed := false
	p := newPusher(opts, x)
	for {
		select {
		case <-ctx.Done():
			return
		case <-src.Changes():
		}
		snap := src.Snapshot()
		if pods != nil {
			pods.set(snap)
		}
		start := time.Now()
		res, errs := p.push(snap)
		now := make(map[string]bool, len(errs))
		for _, err := range errs {
			msg := err.Error()
			now[msg] = true
			if seen[msg] {
				continue
			}
			if errors.Is(err, ambient.ErrNotForZtunnel) {
				log.Info("config object not sent to ztunnel", "reason", msg)
			} else {
				log.Warn("config object not fully applied", "error", msg)
			}
		}
		seen = now
		log.Debug("config pushed", "workloads", len(res.Workloads), "services", len(res.Services),
			"authorizations", len(res.Authorizations), "build", time.Since(start))
		if !pushed {
			x.Flush()
			pushed = true
			log.Info("first config pushed", "workloads", len(res.Workloads), "services", len(res.Services),
				"authorizations", len(res.Authorizations), "errors", len(errs))
			first()
		}
	}
}

func readinessHandler(ready *atomic.Bool, source string, x *xds.Server) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+syncz.Path, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(x.Syncz())
	})
	mux.HandleFunc(ReadyPath, func(w http.ResponseWriter, _ *http.Request) {
		if ready.Load() {
			fmt.Fprintln(w, "ready")
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: first config from the %s source not pushed yet\n", source)
	})
	return mux
}

// pusher builds snapshots into resources and sets them on the xDS server.
// Its ambient.Builder keeps every unchanged resource the same pointer, which
// the xDS server then does not encode again.
type pusher struct {
	opts ambient.Options
	x    *xds.Server
	b    *ambient.Builder
}

func newPusher(opts ambient.Options, x *xds.Server) *pusher {
	return &pusher{opts: opts, x: x, b: ambient.NewBuilder()}
}

// push builds snap and sets the result on the xDS server.
func (p *pusher) push(snap *config.Snapshot) (*ambient.Resources, []error) {
	res, errs := p.b.Build(snap, p.opts)
	p.x.Set(xds.Resources{Addresses: res.Addresses(), Authorizations: res.Authorizations})
	return res, errs
}
