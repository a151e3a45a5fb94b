// Command cni-agent is Ambit's node agent: it installs the ambit-cni plugin
// into the node's CNI config, serves the plugin on its unix socket, programs
// capture rules in enrolled pods' network namespaces and hands those pods to
// ztunnel over ZDS. Flags and environment: see config.go (cni-agent -h).
//
// On SIGTERM or SIGINT it stops serving and exits 0. It leaves capture rules
// in place (pods stay protected across agent restarts) and leaves the plugin
// installed, unless it is uninstalled: with --uninstall-on-exit, or with
// --daemonset when its DaemonSet is gone, being deleted, unreadable or no
// longer selects the node (see uninstalling). Then it removes ambit-cni
// from the CNI config, releases every captured pod and removes the plugin
// binary, in that order (see uninstall).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/cni/agent"
	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/cni/capture"
	"github.com/ambit-mesh/ambit/cni/install"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/zds"
)

func main() {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	cfg, err := parseConfig(os.Args[1:], os.Getenv, exe, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cni-agent: invalid configuration:\n%v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel})).With("node", cfg.Node)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("cni-agent failed", "err", err)
		os.Exit(1)
	}
	log.Info("cni-agent stopped")
}

// podSource returns the configured pod source, its Annotator and
// Kubernetes client (nil for local mode) and the function that runs it
// until ctx ends.
func podSource(cfg Config, log *slog.Logger) (agent.PodSource, agent.Annotator, kubernetes.Interface, func(context.Context) error, error) {
	if cfg.PodSource == PodSourceLocal {
		src := agent.NewLocalSource(cfg.ClusterState, cfg.Node, 0, log)
		return src, nil, nil, func(ctx context.Context) error { src.Run(ctx); return nil }, nil
	}
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig == "" {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("--%s %s without --%s: %w: run in a pod or pass a kubeconfig", FlagPodSource, PodSourceKubernetes, FlagKubeconfig, err)
		}
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("--%s %s: %w", FlagKubeconfig, cfg.Kubeconfig, err)
		}
	}
	rc.UserAgent = "ambit-cni-agent/" + cfg.Node
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("creating the Kubernetes client: %w", err)
	}
	src := agent.NewKubeSource(client, cfg.Node, 0, log)
	src.ReadNetnsAnnotation = cfg.TrustNetnsAnnotation
	return src, src, client, src.Run, nil
}

// netnsVerifier returns how the agent checks that a netns is a pod's:
// local mode's cluster state, or on Kubernetes the pod cgroups of the
// processes in it (and, on test nodes, the netns annotation).
func netnsVerifier(cfg Config, log *slog.Logger) agent.NetnsVerifier {
	if cfg.PodSource == PodSourceLocal {
		return agent.RecordVerifier{Record: "local mode's cluster state " + cfg.ClusterState}
	}
	v := agent.ProcVerifier{Proc: cfg.HostProc}
	if cfg.TrustNetnsAnnotation {
		log.Warn("trusting pod annotation "+agent.NetnsAnnotation+" for netns no pod's process runs in; only for test nodes", "flag", "--"+FlagTrustNetnsAnnotation)
		v.Fallback = agent.RecordVerifier{Record: "pod annotation " + agent.NetnsAnnotation}
	}
	return v
}

// zdsPeerCheck returns the ZDS server's extra peer check. In local mode
// pods run as root like ztunnel, so the uid cannot tell them apart; but
// ztunnel runs in its node's netns, as the agent does, and pods in their
// own: a peer in another netns is refused. nil elsewhere (on Kubernetes
// ztunnel has its own pod netns).
func zdsPeerCheck(cfg Config) (func(zds.Peer) error, error) {
	if cfg.PodSource != PodSourceLocal {
		return nil, nil
	}
	node, err := netns.IDOfPath("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("reading the agent's own netns: %w", err)
	}
	return func(p zds.Peer) error {
		id, err := netns.IDOfPath(fmt.Sprintf("/proc/%d/ns/net", p.PID))
		if err != nil {
			return fmt.Errorf("reading the netns of peer process %d: %w", p.PID, err)
		}
		if id != node {
			return fmt.Errorf("peer process %d is in netns %s, not the node's (%s): local mode's ztunnel runs in its node's netns", p.PID, id, node)
		}
		return nil
	}, nil
}

// run serves until ctx ends or a component fails.
func run(ctx context.Context, cfg Config, log *slog.Logger) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	backend, err := capture.New(cfg.Capture)
	if err != nil {
		return fmt.Errorf("--%s %s: %w", FlagCapture, cfg.Capture, err)
	}
	src, annotator, client, runSource, err := podSource(cfg, log)
	if err != nil {
		return err
	}

	peerCheck, err := zdsPeerCheck(cfg)
	if err != nil {
		return err
	}
	var a *agent.Agent // set below, before the ZDS server serves
	zsrv, err := zds.NewServer(zds.ServerConfig{
		Path:       cfg.ZDSSocket,
		Snapshot:   zds.SnapshotFunc(func() []zds.Pod { return a.Snapshot() }),
		VerifyPeer: peerCheck,
		Logger:     log,
	})
	if err != nil {
		return fmt.Errorf("--%s: %w", FlagZDSSocket, err)
	}
	defer zsrv.Close()

	inst, err := install.New(install.Config{
		ConfDir:      cfg.CNIConfDir,
		BinDir:       cfg.CNIBinDir,
		PluginBinary: cfg.PluginBinary,
		Entry:        install.PluginEntry{AgentSocket: cfg.AgentSocket},
		Logger:       log,
	})
	if err != nil {
		return fmt.Errorf("configuring the plugin installer: %w", err)
	}

	var finder agent.NetnsFinder
	if cfg.PodSource == PodSourceKubernetes {
		finder = agent.ProcNetnsFinder{Proc: cfg.HostProc}
	}
	var zdsServing atomic.Bool
	a, err = agent.New(agent.Config{
		NetnsFinder:       finder,
		ExcludeNamespaces: cfg.ExcludeNamespaces,
		Node:              cfg.Node,
		Source:            src,
		Capture:           backend,
		ZDS:               zsrv,
		PodWait:           cfg.PodWait,
		ZtunnelWait:       cfg.ZtunnelWait,
		Annotator:         annotator,
		Verifier:          netnsVerifier(cfg, log),
		Logger:            log,
		Ready: func(context.Context) error {
			if !zdsServing.Load() {
				return fmt.Errorf("ZDS server on %s not serving yet", cfg.ZDSSocket)
			}
			return pluginInstalled(cfg.CNIConfDir, cfg.CNIBinDir)
		},
	})
	if err != nil {
		return err
	}

	apiLn, err := agentapi.Listen(cfg.AgentSocket)
	if err != nil {
		return fmt.Errorf("--%s: %w", FlagAgentSocket, err)
	}
	apiSrv := &http.Server{Handler: agentapi.NewServer(a), ReadHeaderTimeout: 10 * time.Second}
	healthLn, err := net.Listen("tcp", cfg.HealthAddr)
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("--%s %s: %w: pick a free address", FlagHealthAddr, cfg.HealthAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+ReadyPath, func(w http.ResponseWriter, r *http.Request) {
		if err := a.Status(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	healthSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	var wg sync.WaitGroup
	goFn := func(name string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(); err != nil && ctx.Err() == nil {
				cancel(fmt.Errorf("%s: %w", name, err))
			}
		}()
	}
	goFn("pod source", func() error { return runSource(ctx) })
	goFn("plugin installer", func() error { return inst.Run(ctx) })
	goFn("agent API server", func() error {
		if err := apiSrv.Serve(apiLn); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	goFn("health server", func() error {
		if err := healthSrv.Serve(healthLn); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	goFn("agent", func() error {
		// Discover before ztunnel's first snapshot (see package agent).
		if err := a.Discover(ctx); err != nil {
			return err
		}
		zdsServing.Store(true)
		wg.Add(1)
		go func() { defer wg.Done(); a.Run(ctx) }()
		return zsrv.Serve(ctx)
	})
	log.Info("cni-agent started", "agentSocket", cfg.AgentSocket, "zdsSocket", cfg.ZDSSocket,
		"capture", backend.Name(), "podSource", cfg.PodSource, "health", healthLn.Addr().String())

	<-ctx.Done()
	shutdownCtx, done := context.WithTimeout(context.Background(), 10*time.Second)
	defer done()
	_ = apiSrv.Shutdown(shutdownCtx)
	_ = healthSrv.Shutdown(shutdownCtx)
	zsrv.Close()
	wg.Wait()
	if cfg.UninstallOnExit || (cfg.DaemonSet.Name != "" && uninstalling(shutdownCtx, client, cfg.DaemonSet, cfg.Node, log)) {
		uninstall(shutdownCtx, cfg, inst, a, log)
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}
