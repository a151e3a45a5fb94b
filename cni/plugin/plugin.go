package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/ambit-mesh/ambit/cni/agentapi"
)

// About is printed when the binary runs without CNI_COMMAND.
const About = "ambit-cni: chained CNI plugin enrolling pods in the Ambit ambient mesh"

// statusTimeout caps STATUS, which runtimes call often and expect to be quick.
const statusTimeout = 5 * time.Second

// Agent is the plugin's view of the node agent.
type Agent interface {
	Enroll(ctx context.Context, req agentapi.EnrollRequest) (agentapi.EnrollResponse, error)
	Release(ctx context.Context, req agentapi.ReleaseRequest) error
	Check(ctx context.Context, req agentapi.CheckRequest) (agentapi.CheckResponse, error)
	Status(ctx context.Context) error
}

var _ Agent = (*agentapi.Client)(nil)

// Plugin runs CNI commands. The zero value is not usable; use New.
type Plugin struct {
	// Stdout receives the ADD result.
	Stdout io.Writer
	// Stderr receives logs when the config names no log_file.
	Stderr io.Writer
	// NewAgent returns the agent client for a socket path.
	NewAgent func(socket string) Agent
}

// New returns a plugin writing to the process's stdout/stderr and dialing
// the real agent.
func New() *Plugin {
	return &Plugin{
		Stdout:   os.Stdout,
		Stderr:   os.Stderr,
		NewAgent: func(socket string) Agent { return agentapi.NewClient(socket) },
	}
}

// Funcs returns the CNI command table for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status}
}

// invocation is what every command parses first.
type invocation struct {
	cfg    *Config
	args   *K8sArgs
	log    *slog.Logger
	agent  Agent
	closer func()
}

func (p *Plugin) setup(cmd string, a *skel.CmdArgs) (*invocation, error) {
	cfg, err := ParseConfig(a.StdinData)
	if err != nil {
		return nil, err
	}
	k8s, err := ParseArgs(a.Args)
	if err != nil {
		return nil, err
	}
	log, closer := p.logger(cfg)
	log = log.With("cmd", cmd, "containerID", a.ContainerID)
	if k8s.IsPod() {
		log = log.With("namespace", string(k8s.K8S_POD_NAMESPACE), "pod", string(k8s.K8S_POD_NAME))
	}
	return &invocation{cfg: cfg, args: k8s, log: log, agent: p.NewAgent(cfg.AgentSocket), closer: closer}, nil
}

func (p *Plugin) logger(cfg *Config) (*slog.Logger, func()) {
	w, closer := p.Stderr, func() {}
	if cfg.LogFile != "" {
		f, err := os.OpenFile(cfg.LogFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err == nil {
			w, closer = f, func() { f.Close() }
		} else {
			fmt.Fprintf(p.Stderr, "ambit-cni: cannot open log_file %s, logging to stderr: %v\n", cfg.LogFile, err)
		}
	}
	if w == nil {
		w = io.Discard
	}
	h := slog.NewTextHandler(w, &slog.HandlerOptions{Level: cfg.LogLevel})
	return slog.New(h).With("plugin", PluginType), closer
}

func podRef(a *skel.CmdArgs, k *K8sArgs) agentapi.PodRef {
	return agentapi.PodRef{
		Namespace:   string(k.K8S_POD_NAMESPACE),
		Name:        string(k.K8S_POD_NAME),
		UID:         string(k.K8S_POD_UID),
		ContainerID: a.ContainerID,
		Netns:       a.Netns,
		IfName:      a.IfName,
	}
}

// Add enrolls the pod through the agent and prints prevResult.
func (p *Plugin) Add(a *skel.CmdArgs) error {
	inv, err := p.setup("ADD", a)
	if err != nil {
		return err
	}
	defer inv.closer()
	if inv.cfg.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"ambit-cni: no prevResult: ambit-cni is a chained plugin and cannot be first in the conflist",
			"list ambit-cni after the plugin that creates the pod interface (the primary CNI) in the plugins array")
	}
	if !inv.args.IsPod() {
		inv.log.Info("no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS: not a Kubernetes pod, passing through")
		return p.printPrevResult(inv.cfg)
	}
	ips, err := podIPs(inv.cfg.PrevResult)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), inv.cfg.Timeout)
	defer cancel()
	start := time.Now()
	resp, err := inv.agent.Enroll(ctx, agentapi.EnrollRequest{PodRef: podRef(a, inv.args), IPs: ips})
	if err != nil {
		inv.log.Error("enrollment failed", "err", err, "elapsed", time.Since(start))
		return agentError(inv.cfg, "enroll pod "+podRef(a, inv.args).String(), err, CodeEnrollFailed)
	}
	if resp.Enrolled {
		inv.log.Info("pod enrolled: capture in place, ztunnel ready", "ips", ips, "elapsed", time.Since(start))
	} else {
		inv.log.Info("pod not enrolled", "reason", resp.Reason)
	}
	return p.printPrevResult(inv.cfg)
}

// Del releases the pod, best effort: agent failures are logged, not returned.
func (p *Plugin) Del(a *skel.CmdArgs) error {
	inv, err := p.setup("DEL", a)
	if err != nil {
		return err
	}
	defer inv.closer()
	if !inv.args.IsPod() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), inv.cfg.Timeout)
	defer cancel()
	if err := inv.agent.Release(ctx, agentapi.ReleaseRequest{PodRef: podRef(a, inv.args)}); err != nil {
		inv.log.Warn("releasing pod failed; the agent reconciles it when the pod disappears", "err", err)
		return nil
	}
	inv.log.Info("pod released")
	return nil
}

// Check asks the agent whether an enrolled pod is still captured.
func (p *Plugin) Check(a *skel.CmdArgs) error {
	inv, err := p.setup("CHECK", a)
	if err != nil {
		return err
	}
	defer inv.closer()
	if inv.cfg.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"ambit-cni: CHECK without prevResult",
			"the container runtime must pass the cached result of ADD as prevResult")
	}
	if !inv.args.IsPod() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), inv.cfg.Timeout)
	defer cancel()
	ref := podRef(a, inv.args)
	resp, err := inv.agent.Check(ctx, agentapi.CheckRequest{PodRef: ref})
	if err != nil {
		return agentError(inv.cfg, "check pod "+ref.String(), err, CodeCaptureMissing)
	}
	if resp.Enrolled && !resp.CaptureInPlace {
		return types.NewError(CodeCaptureMissing,
			fmt.Sprintf("ambit-cni: pod %s is enrolled but its traffic capture is not in place: %s", ref, resp.Reason),
			"check the ambit cni-agent logs on this node; deleting the pod re-creates its capture")
	}
	return nil
}

// Status reports whether the agent is reachable and ready.
func (p *Plugin) Status(a *skel.CmdArgs) error {
	inv, err := p.setup("STATUS", a)
	if err != nil {
		return err
	}
	defer inv.closer()
	ctx, cancel := context.WithTimeout(context.Background(), min(inv.cfg.Timeout, statusTimeout))
	defer cancel()
	if err := inv.agent.Status(ctx); err != nil {
		var ue *agentapi.UnreachableError
		var re *agentapi.RemoteError
		msg := fmt.Sprintf("ambit-cni: node agent at %s not ready: %v", inv.cfg.AgentSocket, err)
		switch {
		case errors.As(err, &ue):
			msg = fmt.Sprintf("ambit-cni: node agent at %s unreachable: %v", inv.cfg.AgentSocket, ue.Err)
		case errors.As(err, &re):
			msg = fmt.Sprintf("ambit-cni: node agent at %s not ready: %s", inv.cfg.AgentSocket, re.Message)
		}
		return types.NewError(types.ErrPluginNotAvailable, msg,
			"is the ambit cni-agent DaemonSet running on this node?")
	}
	return nil
}

// agentError maps an agent call failure to a CNI error naming cause and fix.
func agentError(cfg *Config, what string, err error, remoteCode uint) *types.Error {
	var re *agentapi.RemoteError
	var ue *agentapi.UnreachableError
	switch {
	case errors.As(err, &re):
		return types.NewError(remoteCode,
			fmt.Sprintf("ambit-cni: node agent could not %s: %s", what, re.Message),
			"see the ambit cni-agent logs on this node")
	case errors.Is(err, context.DeadlineExceeded):
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ambit-cni: node agent at %s did not %s within %s", cfg.AgentSocket, what, cfg.Timeout),
			"the agent may be overloaded or waiting for ztunnel; check the ambit cni-agent and ztunnel pods on this node, or raise \"timeout\" in the ambit-cni config")
	default:
		cause := err
		if errors.As(err, &ue) {
			cause = ue.Err
		}
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ambit-cni: node agent at %s unreachable: %v; is the ambit cni-agent DaemonSet running on this node?", cfg.AgentSocket, cause),
			"pods in the mesh cannot start on this node until the agent runs")
	}
}

// podIPs extracts the addresses from prevResult.
func podIPs(r types.Result) ([]netip.Addr, error) {
	cur, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("ambit-cni: cannot convert prevResult: %v", err), "")
	}
	var ips []netip.Addr
	for _, ipc := range cur.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			ips = append(ips, a.Unmap())
		}
	}
	return ips, nil
}

// printPrevResult prints prevResult as received when its version is the
// config's, else converted to the config's version.
func (p *Plugin) printPrevResult(cfg *Config) error {
	var v struct {
		CNIVersion string `json:"cniVersion"`
	}
	if json.Unmarshal(cfg.RawPrevResult, &v) == nil && v.CNIVersion == cfg.CNIVersion {
		var buf bytes.Buffer
		buf.Write(cfg.RawPrevResult)
		buf.WriteByte('\n')
		if _, err := p.Stdout.Write(buf.Bytes()); err != nil {
			return types.NewError(types.ErrIOFailure, fmt.Sprintf("ambit-cni: writing result: %v", err), "")
		}
		return nil
	}
	res, err := cfg.PrevResult.GetAsVersion(cfg.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion,
			fmt.Sprintf("ambit-cni: cannot convert prevResult to cniVersion %s: %v", cfg.CNIVersion, err), "")
	}
	if err := res.PrintTo(p.Stdout); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("ambit-cni: writing result: %v", err), "")
	}
	return nil
}
