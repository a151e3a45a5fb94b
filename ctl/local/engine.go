package local

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/ctl/local/topology"
	"github.com/ambit-mesh/ambit/istiod/config"
	"github.com/ambit-mesh/ambit/pkg/localcluster"
	"github.com/ambit-mesh/ambit/pkg/netns"
)

// Binaries local mode runs.
const (
	BinIstiod  = "istiod"
	BinAgent   = "cni-agent"
	BinZtunnel = "ztunnel"
)

// Errors a user acts on.
var (
	ErrNotRoot    = errors.New("local mode needs root (it creates network namespaces and runs the CNI chain): run it with sudo")
	ErrNotLinux   = errors.New("local mode needs Linux (network namespaces, nftables)")
	ErrNotRunning = errors.New("no local mesh is running")
)

// Engine runs a local mesh in one state dir. Up, Apply, Delete and Down
// take an exclusive lock beside the state dir, so two of them never
// interleave; Status and Exec only read.
type Engine struct {
	Paths Paths
	// Out receives progress lines; nil discards.
	Out io.Writer
	// BinDirs are searched for binaries before PATH (the directory of the
	// ambitctl executable).
	BinDirs []string
	// Capture is the cni-agent's --capture backend: auto, nftables or
	// iptables.
	Capture string
	// ReadyTimeout bounds each readiness wait; 0 means 60s.
	ReadyTimeout time.Duration
	// StopGrace is how long processes get between SIGTERM and SIGKILL; 0
	// means 5s.
	StopGrace time.Duration
}

func (e *Engine) out() io.Writer {
	if e.Out == nil {
		return io.Discard
	}
	return e.Out
}

func (e *Engine) progress(format string, args ...any) {
	fmt.Fprintf(e.out(), format+"\n", args...)
}

func (e *Engine) readyTimeout() time.Duration {
	if e.ReadyTimeout <= 0 {
		return 60 * time.Second
	}
	return e.ReadyTimeout
}

func (e *Engine) stopGrace() time.Duration {
	if e.StopGrace <= 0 {
		return 5 * time.Second
	}
	return e.StopGrace
}

// RequirePrivileges reports ErrNotLinux or ErrNotRoot.
func RequirePrivileges() error {
	if runtime.GOOS != "linux" {
		return ErrNotLinux
	}
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	return nil
}

// lock takes the exclusive lock; the returned func releases it. Down
// removes the lock file while holding it, so a lock taken on a file that
// was removed meanwhile is dropped and taken again on the new file.
func (e *Engine) lock() (func(), error) {
	path := e.Paths.Lock()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	for range 3 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			return nil, fmt.Errorf("another ambitctl local command holds %s; wait for it to finish", path)
		}
		held, err1 := f.Stat()
		now, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(held, now) {
			return func() { f.Close() }, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("%s keeps being removed while locking it; is another ambitctl local down running?", path)
}

// FindBinary returns the path of a binary: from BinDirs first, then PATH.
func (e *Engine) FindBinary(name string) (string, error) {
	if strings.Contains(name, "/") {
		if _, err := os.Stat(name); err != nil {
			return "", err
		}
		return filepath.Abs(name)
	}
	for _, d := range e.BinDirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("binary %s not found in %s or PATH: run `make build` (it puts every binary in bin/)", name, strings.Join(e.BinDirs, ", "))
	}
	return filepath.Abs(p)
}

// session is the state of one mutating command.
type session struct {
	e      *Engine
	topo   *topology.Topology
	procs  *procTable
	reaped map[int]<-chan struct{}
	// redirected holds the uids of the pods marked captured (annotation
	// ambient.istio.io/redirection); persisted in Paths.Redirection.
	redirected map[string]bool
}

func newUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func randomToken() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Up builds the mesh of the topology file and returns once it is ready,
// leaving its processes running. It first clears what a previous run left.
// A pod whose CNI ADD fails is reported in the error, the rest of the mesh
// stays up.
func (e *Engine) Up(ctx context.Context, topoFile string) error {
	if err := RequirePrivileges(); err != nil {
		return err
	}
	t, err := topology.Load(topoFile)
	if err != nil {
		return err
	}
	if err := checkNames(t); err != nil {
		return err
	}
	if err := CheckConfig(t, &localcluster.State{}); err != nil {
		return err
	}
	bins := map[string]string{}
	for _, b := range []string{BinIstiod, BinAgent, BinZtunnel} {
		if bins[b], err = e.FindBinary(b); err != nil {
			return err
		}
	}
	for _, p := range t.Pods {
		if len(p.Run) > 0 {
			if _, err := e.FindBinary(p.Run[0]); err != nil {
				return fmt.Errorf("pod %s: %w", p.Key(), err)
			}
		}
	}
	if err := e.down(ctx, true); err != nil {
		return fmt.Errorf("clearing the previous local mesh: %w", err)
	}
	unlock, err := e.lock()
	if err != nil {
		return err
	}
	defer unlock()
	s := &session{e: e, topo: t, procs: &procTable{}, reaped: map[int]<-chan struct{}{}, redirected: map[string]bool{}}
	if err := s.up(ctx, bins); err != nil {
		return fmt.Errorf("%w\nthe mesh is left as it is for inspection: `ambitctl local status`, logs in %s; `ambitctl local down` removes it", err, e.Paths.Logs())
	}
	return nil
}

func (s *session) up(ctx context.Context, bins map[string]string) error {
	e, t, p := s.e, s.topo, s.e.Paths
	for _, d := range []string{p.Dir, p.Logs(), p.IstiodDir(), p.CNIBin(), p.ConfigDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := s.writeTopology(); err != nil {
		return err
	}
	if err := s.procs.save(p.Procs()); err != nil {
		return err
	}
	if err := writeTokens(p, t); err != nil {
		return err
	}
	cs := &localcluster.State{}
	for _, ns := range t.Namespaces {
		cs.Namespaces = append(cs.Namespaces, localcluster.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	if err := s.writeState(cs); err != nil {
		return err
	}
	if err := InstallPlugins(ctx, p.CNIBin(), e.BinDirs, e.out()); err != nil {
		return err
	}
	for i, n := range t.Nodes {
		for _, d := range []string{p.NetD(n.Name), p.IPAMDir(n.Name)} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		if err := writeFileAtomic(p.Conflist(n.Name), Conflist(i, p.IPAMDir(n.Name)), 0o644); err != nil {
			return err
		}
	}

	e.progress("creating backbone %s (%s on %s)", BackboneNetns, BackboneIP, BackboneBridge)
	if err := createBackbone(); err != nil {
		return err
	}
	for i, n := range t.Nodes {
		e.progress("creating node %s (%s, pods %s)", n.Name, NodeIP(i), PodCIDR(i))
		if err := createNode(t, i); err != nil {
			return err
		}
	}

	e.progress("starting istiod on %s (config from %s)", IstiodAddr(), p.ConfigDir())
	if err := s.start(Proc{Name: "istiod", Kind: KindIstiod}, BackboneNetns, bins[BinIstiod], []string{
		"--state-dir", p.IstiodDir(), "--token-file", p.Tokens(), "--grpc-addr", IstiodAddr(),
		"--root-cert-out", p.RootCert(), "--serving-ip", BackboneIP.String(), "--trust-domain", t.TrustDomain,
		"--config-source", "dir", "--config-dir", p.ConfigDir(), "--tunnel", "annotation",
		"--readiness-addr", IstiodReadinessAddr(),
	}, nil); err != nil {
		return err
	}
	if err := s.wait(ctx, "istiod", func(ctx context.Context) error { return istiodReady(ctx, p) }); err != nil {
		return err
	}

	for _, n := range t.Nodes {
		e.progress("starting cni-agent and ztunnel on node %s", n.Name)
		capture := e.Capture
		if capture == "" {
			capture = DefaultCapture
		}
		if err := s.start(Proc{Name: "cni-agent-" + n.Name, Kind: KindAgent, Node: n.Name}, NodeNetns(n.Name), bins[BinAgent], []string{
			"--node", n.Name, "--agent-socket", p.AgentSocket(n.Name), "--zds-socket", p.ZDSSocket(n.Name),
			"--pod-source", "local", "--cluster-state", p.Cluster(), "--cni-bin-dir", p.CNIBin(),
			"--cni-conf-dir", p.NetD(n.Name), "--capture", capture, "--health-addr", AgentHealthAddr,
		}, nil); err != nil {
			return err
		}
		if err := s.start(Proc{Name: "ztunnel-" + n.Name, Kind: KindZtunnel, Node: n.Name}, NodeNetns(n.Name), bins[BinZtunnel], []string{
			"--node", n.Name, "--zds-socket", p.ZDSSocket(n.Name), "--ca-addr", IstiodAddr(),
			"--ca-root", p.RootCert(), "--token-file", p.NodeToken(n.Name),
			"--trust-domain", t.TrustDomain,
			// Open connections may finish for 2 s after SIGTERM; down
			// waits for no longer.
			"--drain-timeout", "2s",
		}, nil); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, 2*len(t.Nodes))
	for i, n := range t.Nodes {
		wg.Add(2)
		go func() {
			defer wg.Done()
			errs[2*i] = s.wait(ctx, "cni-agent-"+n.Name, func(ctx context.Context) error { return agentReady(ctx, p, n.Name) })
		}()
		go func() {
			defer wg.Done()
			errs[2*i+1] = s.wait(ctx, "ztunnel-"+n.Name, func(ctx context.Context) error { return ztunnelReady(ctx, n.Name) })
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}

	var podErrs []error
	for _, n := range t.Nodes {
		for _, pod := range t.PodsOn(n.Name) {
			if err := s.addPod(ctx, pod); err != nil {
				if errors.Is(err, errCNI) {
					e.progress("pod %s: %v", pod.Key(), err)
					podErrs = append(podErrs, fmt.Errorf("pod %s: %w", pod.Key(), err))
					continue
				}
				return fmt.Errorf("pod %s: %w", pod.Key(), err)
			}
		}
	}
	if err := errors.Join(podErrs...); err != nil {
		return fmt.Errorf("the mesh is up but some pods are not:\n%w", err)
	}
	e.progress("local mesh ready: %d nodes, %d pods (state in %s); try `ambitctl local status`", len(t.Nodes), len(t.Pods), p.Dir)
	return nil
}

func (s *session) writeTopology() error {
	b, err := yaml.Marshal(s.topo)
	if err != nil {
		return err
	}
	return writeFileAtomic(s.e.Paths.Topology(), b, 0o644)
}

// writeState writes istiod's config dir, then the cluster state (next
// generation) the agents watch.
func (s *session) writeState(cs *localcluster.State) error {
	if err := s.writeConfig(cs); err != nil {
		return err
	}
	return s.writeCluster(cs)
}

// writeCluster writes the cluster state (next generation).
func (s *session) writeCluster(cs *localcluster.State) error {
	cs.Generation++
	if err := localcluster.Write(s.e.Paths.Cluster(), cs); err != nil {
		return fmt.Errorf("writing cluster state: %w", err)
	}
	return nil
}

// writeConfig persists the redirection marks (of the pods cs still has)
// and rewrites the files of istiod's config dir that changed, each
// atomically.
func (s *session) writeConfig(cs *localcluster.State) error {
	marks := map[string]bool{}
	for _, p := range cs.Pods {
		if s.redirected[p.UID] {
			marks[p.UID] = true
		}
	}
	s.redirected = marks
	b, err := json.MarshalIndent(struct {
		Redirected []string `json:"redirected"`
	}{config.SortedKeys(marks)}, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(s.e.Paths.Redirection(), append(b, '\n'), 0o644); err != nil {
		return err
	}
	files, err := ConfigFiles(s.topo, cs, marks)
	if err != nil {
		return err
	}
	for _, name := range ConfigFileNames {
		path := filepath.Join(s.e.Paths.ConfigDir(), name)
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, files[name]) {
			continue
		}
		if err := writeFileAtomic(path, files[name], 0o644); err != nil {
			return fmt.Errorf("writing istiod's config: %w", err)
		}
	}
	return nil
}

// loadRedirection reads the redirection marks; a missing file is none.
func loadRedirection(p Paths) (map[string]bool, error) {
	b, err := os.ReadFile(p.Redirection())
	if os.IsNotExist(err) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	var doc struct {
		Redirected []string `json:"redirected"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", p.Redirection(), err)
	}
	m := map[string]bool{}
	for _, uid := range doc.Redirected {
		m[uid] = true
	}
	return m, nil
}

func (s *session) loadState() (*localcluster.State, error) {
	cs, err := localcluster.Load(s.e.Paths.Cluster())
	if err != nil {
		return nil, err
	}
	return cs, nil
}

// writeTokens writes istiod's token file and each node's token (mode
// 0600): one token per node, which authenticates as that node's ztunnel
// (entry field node), so istiod issues it only the identities of the pods
// on that node and serves it xDS only as that node's ztunnel.
func writeTokens(p Paths, t *topology.Topology) error {
	type entry struct {
		Name  string `json:"name"`
		Token string `json:"token"`
		Node  string `json:"node"`
	}
	var doc struct {
		Tokens []entry `json:"tokens"`
	}
	for _, n := range t.Nodes {
		tok := randomToken()
		doc.Tokens = append(doc.Tokens, entry{Name: "ztunnel-" + n.Name, Token: tok, Node: n.Name})
		if err := os.MkdirAll(p.NodeDir(n.Name), 0o755); err != nil {
			return err
		}
		if err := writeFileAtomic(p.NodeToken(n.Name), []byte(tok), 0o600); err != nil {
			return err
		}
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	return writeFileAtomic(p.Tokens(), append([]byte("# Generated by ambitctl local up: one token per node's ztunnel, bound to its node.\n"), b...), 0o600)
}

// start launches a process in ns and records it in procs.json; a process
// that cannot be recorded is killed (recordStarted).
func (s *session) start(pr Proc, ns, bin string, args, env []string) error {
	p, reaped, err := Launch(ns, bin, args, env, s.e.Paths.Log(pr.Name))
	if err != nil {
		return err
	}
	p.Name, p.Kind, p.Node, p.Pod = pr.Name, pr.Kind, pr.Node, pr.Pod
	n := len(s.procs.Procs)
	s.procs.Procs = append(s.procs.Procs, p)
	if err := recordStarted(s.procs, s.e.Paths.Procs(), p, reaped); err != nil {
		s.procs.Procs = s.procs.Procs[:n]
		return err
	}
	s.reaped[p.PID] = reaped
	return nil
}

func (s *session) proc(name string) (Proc, bool) {
	for _, p := range s.procs.Procs {
		if p.Name == name {
			return p, true
		}
	}
	return Proc{}, false
}

// wait polls check until it succeeds, the process exits or the readiness
// timeout passes; errors name the log file to read. A check passes only
// when its answer came from the recorded process (answeredBy).
func (s *session) wait(ctx context.Context, name string, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.e.readyTimeout())
	defer cancel()
	pr, _ := s.proc(name)
	reaped := s.reaped[pr.PID]
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			last = s.e.answeredBy(pr)
		}
		if last == nil {
			return nil
		}
		select {
		case <-reaped:
			return fmt.Errorf("%s exited before it was ready (%v); read %s", name, last, pr.Log)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %v; read %s", name, s.e.readyTimeout(), last, pr.Log)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// answeredBy returns nil when the readiness endpoint that just answered
// belongs to p: p is still the recorded process (same pid and start time,
// not exited) and, for istiod, ztunnel and cni-agent, holds the listening
// socket of its readiness endpoint (not another process on that address,
// such as one left running untracked).
func (e *Engine) answeredBy(p Proc) error {
	if p.PID == 0 {
		return fmt.Errorf("%s is not recorded", p.Name)
	}
	if !p.Alive() {
		return fmt.Errorf("%s (pid %d) exited", p.Name, p.PID)
	}
	var err error
	switch p.Kind {
	case KindIstiod:
		err = holdsListener(p.PID, IstiodReadyPort, "")
	case KindZtunnel:
		err = holdsListener(p.PID, ZtunnelReadyPort, "")
	case KindAgent:
		err = holdsListener(p.PID, 0, e.Paths.AgentSocket(p.Node))
	}
	if err != nil {
		return fmt.Errorf("the readiness answer is not from %s (pid %d): %w", p.Name, p.PID, err)
	}
	return nil
}

// istiodReady: the root certificate is written and /ready answers 200
// (istiod pushed its first config).
func istiodReady(ctx context.Context, p Paths) error {
	if _, err := os.Stat(p.RootCert()); err != nil {
		return fmt.Errorf("no root certificate yet: %w", err)
	}
	code, body, err := httpGetIn(ctx, BackboneNetns, "http://"+IstiodReadinessAddr()+"/ready")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("/ready: %d %s", code, strings.TrimSpace(string(body)))
	}
	return nil
}

func agentReady(ctx context.Context, p Paths, node string) error {
	c := agentapi.NewClient(p.AgentSocket(node))
	defer c.CloseIdleConnections()
	if err := c.Status(ctx); err != nil {
		return err
	}
	_, err := loadChain(ctx, p.NetD(node))
	return err
}

// httpGetIn makes a GET from inside the named network namespace.
func httpGetIn(ctx context.Context, nsName, url string) (int, []byte, error) {
	ns, err := netns.OpenName(nsName)
	if err != nil {
		return 0, nil, err
	}
	defer ns.Close()
	socks := &netns.Sockets{NS: ns}
	client := &http.Client{Transport: &http.Transport{DialContext: socks.Dial, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return resp.StatusCode, body, err
}

func ztunnelReady(ctx context.Context, node string) error {
	code, body, err := httpGetIn(ctx, NodeNetns(node), fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", ZtunnelReadyPort))
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("readiness %d: %s", code, strings.TrimSpace(string(body)))
	}
	return nil
}

// ztunnelSynced reports whether the node's ztunnel holds want (see
// expectedState), naming the differences when not.
func ztunnelSynced(ctx context.Context, node string, want expectedState) error {
	code, body, err := httpGetIn(ctx, NodeNetns(node), fmt.Sprintf("http://127.0.0.1:%d/config_dump", ZtunnelAdminPort))
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("config_dump: status %d", code)
	}
	got, err := dumpState(body)
	if err != nil {
		return err
	}
	if d := want.diff(got); d != "" {
		return fmt.Errorf("ztunnel on %s is not in sync with istiod's config yet: %s", node, d)
	}
	return nil
}

// syncZtunnels waits until every ztunnel holds, through istiod and xDS,
// what the config dir now says (the workloads with their addresses and
// tunnel, services and policies, as istiod's builder derives them).
func (s *session) syncZtunnels(ctx context.Context) error {
	files := map[string][]byte{}
	for _, name := range ConfigFileNames {
		b, err := os.ReadFile(filepath.Join(s.e.Paths.ConfigDir(), name))
		if err != nil {
			return err
		}
		files[name] = b
	}
	want, err := expected(s.topo, files)
	if err != nil {
		return fmt.Errorf("reading back istiod's config: %w", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(s.topo.Nodes))
	for i, n := range s.topo.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.wait(ctx, "ztunnel-"+n.Name, func(ctx context.Context) error { return ztunnelSynced(ctx, n.Name, want) })
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ztunnelHasPod reports whether the node's ztunnel serves the pod (ZDS):
// its config dump lists the pod uid.
func ztunnelHasPod(ctx context.Context, node, uid string) (bool, error) {
	code, body, err := httpGetIn(ctx, NodeNetns(node), fmt.Sprintf("http://127.0.0.1:%d/config_dump", ZtunnelAdminPort))
	if err != nil {
		return false, err
	}
	if code != http.StatusOK {
		return false, fmt.Errorf("config_dump: status %d", code)
	}
	var d struct {
		Pods []struct {
			UID string `json:"uid"`
		} `json:"pods"`
	}
	if err := json.Unmarshal(body, &d); err != nil {
		return false, fmt.Errorf("decoding config_dump: %w", err)
	}
	for _, p := range d.Pods {
		if p.UID == uid {
			return true, nil
		}
	}
	return false, nil
}
