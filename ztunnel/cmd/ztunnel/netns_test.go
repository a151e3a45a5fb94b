package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/ambit-mesh/ambit/cni/capture"
	"github.com/ambit-mesh/ambit/e2e/echo"
	"github.com/ambit-mesh/ambit/istiod/ca/catest"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
	"github.com/ambit-mesh/ambit/pkg/sockopt"
	"github.com/ambit-mesh/ambit/pkg/zds"
)

const prefix = "ambit-t-zt-"

func TestMain(m *testing.M) { netnstest.Main(m, prefix) }

// Addresses exist only inside the test's own namespaces.
var (
	ipA = netip.MustParseAddr("10.77.0.1") // enrolled, HBONE
	ipB = netip.MustParseAddr("10.77.0.2") // enrolled, HBONE
	ipC = netip.MustParseAddr("10.77.0.3") // not enrolled, not in the config
)

const (
	idA = "spiffe://cluster.local/ns/ns-a/sa/sa-a"
	idB = "spiffe://cluster.local/ns/ns-b/sa/sa-b"
)

// meshConfig is the local config: A and B speak HBONE; extra is appended
// to B's authorizationPolicies and policies.
func meshConfig(bPolicies []string, policies string) string {
	list := "[]"
	if len(bPolicies) > 0 {
		list = "[" + strings.Join(bPolicies, ", ") + "]"
	}
	return fmt.Sprintf(`workloads:
- uid: c1//Pod/ns-a/pod-a
  name: pod-a
  namespace: ns-a
  addresses: ["%s"]
  serviceAccount: sa-a
  tunnelProtocol: HBONE
  node: node-a
  canonicalName: app-a
- uid: c1//Pod/ns-b/pod-b
  name: pod-b
  namespace: ns-b
  addresses: ["%s"]
  serviceAccount: sa-b
  tunnelProtocol: HBONE
  node: node-a
  canonicalName: app-b
  authorizationPolicies: %s
policies:%s
`, ipA, ipB, list, policies)
}

const strictPolicy = `
- name: istio_converted_static_strict
  namespace: istio-system
  scope: WORKLOAD_SELECTOR
  action: DENY
  groups:
  - rules:
    - matches:
      - notPrincipals: [{presence: {}}]`

const denyA = `
- name: deny-a
  namespace: ns-b
  scope: WORKLOAD_SELECTOR
  action: DENY
  groups:
  - rules:
    - matches:
      - principals: [{exact: cluster.local/ns/ns-a/sa/sa-a}]`

// lockedBuffer collects the ztunnel log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type podNS struct {
	name string
	ip   netip.Addr
	ns   *os.File
}

// wire creates the node namespace with a bridge and one veth per pod.
func wire(t *testing.T, pods ...*podNS) {
	t.Helper()
	node := netnstest.New(t, prefix+"node")
	nodeH, err := netlink.NewHandleAt(vnetns.NsHandle(int(node.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer nodeH.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := nodeH.LinkAdd(br); err != nil {
		t.Fatalf("creating bridge: %v", err)
	}
	if err := nodeH.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	for i, p := range pods {
		p.ns = netnstest.New(t, prefix+p.name)
		h, err := netlink.NewHandleAt(vnetns.NsHandle(int(p.ns.Fd())))
		if err != nil {
			t.Fatal(err)
		}
		hostSide := fmt.Sprintf("veth%d", i)
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: hostSide,
			PeerNamespace: netlink.NsFd(int(node.Fd()))}
		if err := h.LinkAdd(veth); err != nil {
			h.Close()
			t.Fatalf("creating veth for %s: %v", p.name, err)
		}
		for _, n := range []string{"lo", "eth0"} {
			l, err := h.LinkByName(n)
			if err == nil {
				err = h.LinkSetUp(l)
			}
			if err != nil {
				h.Close()
				t.Fatal(err)
			}
		}
		eth, _ := h.LinkByName("eth0")
		if err := h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: p.ip.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			h.Close()
			t.Fatal(err)
		}
		h.Close()
		hl, err := nodeH.LinkByName(hostSide)
		if err == nil {
			err = nodeH.LinkSetMaster(hl, br)
		}
		if err == nil {
			err = nodeH.LinkSetUp(hl)
		}
		if err != nil {
			t.Fatalf("attaching %s to the bridge: %v", hostSide, err)
		}
	}
}

// serveEcho runs the TCP echo server on :8080 in p's namespace.
func serveEcho(t *testing.T, ctx context.Context, p *podNS) {
	t.Helper()
	s := netns.Sockets{NS: p.ns}
	ln, err := s.Listen(ctx, "tcp", "0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	srv := &echo.Server{Name: p.name, Logger: slog.New(slog.DiscardHandler)}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx, echo.Listeners{TCP: ln}) }()
	t.Cleanup(func() { ln.Close(); <-done })
}

// call connects from p (no mark: captured when p is enrolled) to dst, sends
// one line and returns the answer.
func call(ctx context.Context, p *podNS, dst netip.AddrPort, line string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s := netns.Sockets{NS: p.ns}
	c, err := s.Dial(ctx, "tcp", dst.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c, line); err != nil {
		return "", err
	}
	ans, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading answer: %w", err)
	}
	return strings.TrimSpace(ans), nil
}

// eventually polls fn until it returns nil or the deadline passes.
func eventually(t *testing.T, what string, d time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, d, err)
		}
		time.Sleep(50 * time.Millisecond) // poll interval, not a readiness stand-in
	}
}

func expectEcho(ctx context.Context, from *podNS, dst netip.AddrPort, pod string) func() error {
	return func() error {
		ans, err := call(ctx, from, dst, "hi-"+from.name)
		if err != nil {
			return err
		}
		if !strings.HasPrefix(ans, "pod="+pod+" ") || !strings.HasSuffix(ans, "echo=hi-"+from.name) {
			return fmt.Errorf("answer %q, want one from %s", ans, pod)
		}
		return nil
	}
}

func expectFail(ctx context.Context, from *podNS, dst netip.AddrPort) func() error {
	return func() error {
		ans, err := call(ctx, from, dst, "x")
		if err == nil {
			return fmt.Errorf("connection %s → %s succeeded (%q), want it refused", from.name, dst, ans)
		}
		return nil
	}
}

// openFiles counts this process's open descriptors (ztunnel runs in the
// test process).
func openFiles(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

func httpGet(url string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// ztunnel is one in-process run of the binary's run function.
type ztunnel struct {
	cancel context.CancelFunc
	done   chan error
	addrs  addrs
}

// startZtunnel runs ztunnel and waits until it is ready; the caller stops
// it (z.stop).
func startZtunnel(t *testing.T, cfg Config, log *slog.Logger) *ztunnel {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	z := &ztunnel{cancel: cancel, done: make(chan error, 1)}
	got := make(chan addrs, 1)
	go func() { z.done <- run(ctx, cfg, log, func(a addrs) { got <- a }) }()
	select {
	case z.addrs = <-got:
	case err := <-z.done:
		cancel()
		z.cancel = nil
		t.Fatalf("ztunnel exited at start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		<-z.done
		z.cancel = nil
		t.Fatal("ztunnel did not start")
	}
	started := false
	defer func() {
		if !started {
			z.stop()
		}
	}()
	eventually(t, "ztunnel ready", 30*time.Second, func() error {
		code, body, err := httpGet("http://" + z.addrs.Readiness.String() + "/healthz/ready")
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	})
	started = true
	return z
}

func (z *ztunnel) stop() {
	if z.cancel == nil {
		return
	}
	z.cancel()
	<-z.done
	z.cancel = nil
}

type snapshot struct {
	mu   sync.Mutex
	pods []zds.Pod
}

func (s *snapshot) Snapshot() []zds.Pod {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]zds.Pod(nil), s.pods...)
}

func (s *snapshot) remove(uid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range s.pods {
		if p.UID == uid {
			s.pods = append(s.pods[:i], s.pods[i+1:]...)
			return
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func metricLines(t *testing.T, z *ztunnel, name string) []string {
	t.Helper()
	code, body, err := httpGet("http://" + z.addrs.Metrics.String() + "/stats/prometheus")
	if err != nil || code != 200 {
		t.Fatalf("scraping metrics: %d %v", code, err)
	}
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, name+"{") {
			out = append(out, l)
		}
	}
	return out
}

func hasLine(lines []string, parts ...string) bool {
	for _, l := range lines {
		ok := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func TestZtunnelNetns(t *testing.T) {
	netnstest.RequireRoot(t)
	capt, err := capture.New(capture.ModeNFTables)
	if err != nil {
		netnstest.SkipOrFail(t, "nftables capture unavailable: %v", err)
	}
	ctx := t.Context()
	a, b, c := &podNS{name: "pod-a", ip: ipA}, &podNS{name: "pod-b", ip: ipB}, &podNS{name: "pod-c", ip: ipC}
	wire(t, a, b, c)
	for _, p := range []*podNS{a, b} {
		if err := capt.Install(ctx, p.ns, capture.Config{}); err != nil {
			t.Fatalf("installing capture in %s: %v", p.name, err)
		}
	}
	for _, p := range []*podNS{b, c} {
		serveEcho(t, ctx, p)
	}

	ca := catest.Start(t, catest.Options{})
	dir := t.TempDir()
	rootFile, tokenFile, cfgFile := filepath.Join(dir, "root-cert.pem"), filepath.Join(dir, "token"), filepath.Join(dir, "ztunnel-config.yaml")
	writeFile(t, rootFile, string(ca.RootsPEM))
	writeFile(t, tokenFile, ca.Token+"\n")
	writeFile(t, cfgFile, meshConfig(nil, " []"))

	snap := &snapshot{pods: []zds.Pod{
		{UID: "uid-a", Name: "pod-a", Namespace: "ns-a", ServiceAccount: "sa-a", Netns: a.ns},
		{UID: "uid-b", Name: "pod-b", Namespace: "ns-b", ServiceAccount: "sa-b", Netns: b.ns},
	}}
	zsrv, err := zds.NewServer(zds.ServerConfig{Path: filepath.Join(dir, "ztunnel.sock"), Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	zctx, zcancel := context.WithCancel(ctx)
	zdone := make(chan struct{})
	go func() { defer close(zdone); _ = zsrv.Serve(zctx) }()
	t.Cleanup(func() { zcancel(); <-zdone })

	cfg, err := parseConfig([]string{
		"--node", "node-a", "--zds-socket", zsrv.Path(), "--ca-addr", ca.Addr, "--ca-root", rootFile,
		"--ca-server-name", ca.ServerName, "--token-file", tokenFile, "--local-config", cfgFile,
		"--metrics-addr", "127.0.0.1:0", "--readiness-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
	}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", "node-a")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ztunnel log:\n%s", logs.String())
		}
	})
	z := startZtunnel(t, cfg, log)
	t.Cleanup(func() { z.stop() }) // whichever run is current

	toB := netip.AddrPortFrom(ipB, 8080)
	toC := netip.AddrPortFrom(ipC, 8080)

	t.Run("hbone A to B", func(t *testing.T) {
		eventually(t, "A → B through HBONE", 10*time.Second, expectEcho(ctx, a, toB, "pod-b"))
		// The echo saw the connection come from B's own address (dialed
		// by ztunnel inside B), not from A: it went through the tunnel.
		ans, err := call(ctx, a, toB, "again")
		if err != nil || !strings.Contains(ans, "peer="+ipB.String()+":") {
			t.Errorf("answer %q (%v): want peer=%s (relayed inside B)", ans, err, ipB)
		}
		eventually(t, "metrics of A → B", 5*time.Second, func() error {
			closed := metricLines(t, z, "istio_tcp_connections_closed_total")
			if !hasLine(closed, `reporter="destination"`, `source_principal="`+idA+`"`, `destination_principal="`+idB+`"`,
				`connection_security_policy="mutual_tls"`, `source_workload="pod-a"`, `destination_workload="pod-b"`) {
				return fmt.Errorf("no destination-reported line with A's and B's principals:\n%s", strings.Join(closed, "\n"))
			}
			if !hasLine(closed, `reporter="source"`, `source_principal="`+idA+`"`, `destination_principal="`+idB+`"`, `response_flags="-"`) {
				return fmt.Errorf("no source-reported line:\n%s", strings.Join(closed, "\n"))
			}
			for _, m := range []string{"istio_tcp_connections_opened_total", "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"} {
				if !hasLine(metricLines(t, z, m), `reporter="destination"`, `source_principal="`+idA+`"`) {
					return fmt.Errorf("no %s line for A", m)
				}
			}
			return nil
		})
		if !strings.Contains(logs.String(), "direction=inbound ") || !strings.Contains(logs.String(), "src_identity="+idA) {
			t.Errorf("no inbound access-log line with A's identity")
		}
	})

	t.Run("config_dump", func(t *testing.T) {
		code, body, err := httpGet("http://" + z.addrs.Admin.String() + "/config_dump")
		if err != nil || code != 200 {
			t.Fatalf("%d %v", code, err)
		}
		var d struct {
			Workloads    []map[string]any
			Certificates []map[string]any
			Pods         []map[string]any
		}
		if err := json.Unmarshal([]byte(body), &d); err != nil {
			t.Fatal(err)
		}
		if len(d.Workloads) != 2 || len(d.Pods) != 2 || len(d.Certificates) < 2 {
			t.Errorf("config_dump: %s", body)
		}
		if !strings.Contains(body, `"hbone": "[::]:15008"`) && !strings.Contains(body, `"hbone": "0.0.0.0:15008"`) {
			t.Errorf("config_dump lacks the pods' listeners: %s", body)
		}
	})

	t.Run("passthrough to an unenrolled destination", func(t *testing.T) {
		eventually(t, "A → C passthrough", 10*time.Second, expectEcho(ctx, a, toC, "pod-c"))
	})

	t.Run("permissive plaintext to B", func(t *testing.T) {
		eventually(t, "C → B plaintext", 10*time.Second, expectEcho(ctx, c, toB, "pod-b"))
	})

	t.Run("no path loops ztunnel into itself", func(t *testing.T) {
		// From outside the mesh (C) to B's own capture ports, and from A
		// to B's ports through the tunnel: each is refused at once and
		// counted, and ztunnel's open files stay where they were.
		before := openFiles(t)
		for _, tc := range []struct {
			from *podNS
			port uint16
		}{{c, 15006}, {c, 15001}, {a, 15006}, {a, 15001}, {a, 15008}, {b, 15001}, {b, 15006}} {
			dst := netip.AddrPortFrom(ipB, tc.port)
			eventually(t, tc.from.name+" → "+dst.String()+" refused", 5*time.Second, expectFail(ctx, tc.from, dst))
		}
		eventually(t, "self calls counted", 5*time.Second, func() error {
			if !hasLine(metricLines(t, z, "ambit_ztunnel_refused_connections_total"), `pod="pod-b"`, `reason="self_call"`) {
				return errors.New("no self_call refusal counted for pod-b")
			}
			return nil
		})
		eventually(t, "ztunnel's open files back near where they were", 5*time.Second, func() error {
			if n := openFiles(t); n > before+16 {
				return fmt.Errorf("ztunnel holds %d open files, %d before the calls", n, before)
			}
			return nil
		})
	})

	t.Run("strict B", func(t *testing.T) {
		writeFile(t, cfgFile, meshConfig([]string{"istio-system/istio_converted_static_strict"}, strictPolicy))
		eventually(t, "C → B refused under STRICT", 10*time.Second, expectFail(ctx, c, toB))
		eventually(t, "A → B still works", 10*time.Second, expectEcho(ctx, a, toB, "pod-b"))
		// The first failed call may have been a connection that was open
		// when the policy changed (closed by the re-check, not denied):
		// each attempt makes a new call before reading the counter.
		eventually(t, "denial counted", 5*time.Second, func() error {
			if err := expectFail(ctx, c, toB)(); err != nil {
				return err
			}
			if !hasLine(metricLines(t, z, "istio_tcp_connections_closed_total"), `reporter="destination"`,
				`response_flags="DENY"`, `connection_security_policy="none"`, `destination_workload="pod-b"`) {
				return errors.New("no DENY line for plaintext to B")
			}
			return nil
		})
	})

	t.Run("policy change closes open connections", func(t *testing.T) {
		s := netns.Sockets{NS: a.ns}
		conn, err := s.Dial(ctx, "tcp", toB.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintln(conn, "before")
		if ans, err := r.ReadString('\n'); err != nil || !strings.Contains(ans, "echo=before") {
			t.Fatalf("open connection: %q %v", ans, err)
		}
		writeFile(t, cfgFile, meshConfig([]string{"istio-system/istio_converted_static_strict", "ns-b/deny-a"}, strictPolicy+denyA))
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if ans, err := r.ReadString('\n'); err == nil {
			t.Fatalf("connection still open after deny-a: read %q", ans)
		} else if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("connection not closed within 10s of the deny policy")
		}
		eventually(t, "revocation counted", 5*time.Second, func() error {
			if !hasLine(metricLines(t, z, "ambit_ztunnel_revoked_connections_total"), `reporter="destination"`,
				`source_workload="pod-a"`, `destination_workload="pod-b"`, `response_flags="-"`) {
				return errors.New("no ambit_ztunnel_revoked_connections_total line for the A → B connection deny-a closed")
			}
			return nil
		})
		eventually(t, "new A → B refused", 10*time.Second, expectFail(ctx, a, toB))
		writeFile(t, cfgFile, meshConfig([]string{"istio-system/istio_converted_static_strict"}, strictPolicy))
		eventually(t, "A → B allowed again", 10*time.Second, expectEcho(ctx, a, toB, "pod-b"))
	})

	t.Run("stopped ztunnel: no plaintext path", func(t *testing.T) {
		z.stop()
		if err := expectFail(ctx, a, toB)(); err != nil {
			t.Error(err)
		}
		if err := expectFail(ctx, a, toC)(); err != nil {
			t.Error(err)
		}
	})

	t.Run("restart: snapshot restores", func(t *testing.T) {
		z = startZtunnel(t, cfg, log)
		eventually(t, "A → B after restart", 10*time.Second, expectEcho(ctx, a, toB, "pod-b"))
	})

	t.Run("SIGTERM drains open connections", func(t *testing.T) {
		z.stop()
		dcfg := cfg
		dcfg.DrainTimeout = 20 * time.Second
		z = startZtunnel(t, dcfg, log)
		eventually(t, "A → B with the draining ztunnel", 10*time.Second, expectEcho(ctx, a, toB, "pod-b"))
		s := netns.Sockets{NS: a.ns}
		conn, err := s.Dial(ctx, "tcp", toB.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintln(conn, "before")
		if ans, err := r.ReadString('\n'); err != nil || !strings.Contains(ans, "echo=before") {
			t.Fatalf("open connection: %q %v", ans, err)
		}
		stopped := make(chan time.Duration, 1)
		begin := time.Now()
		go func() { z.stop(); stopped <- time.Since(begin) }()
		// Whatever fails below, the next subtests get a ztunnel again.
		defer func() {
			conn.Close()
			<-stopped
			z = startZtunnel(t, cfg, log)
		}()
		// New connections are no longer taken (no successor here: refused).
		eventually(t, "new A → B refused while draining", 10*time.Second, expectFail(ctx, a, toB))
		select {
		case d := <-stopped:
			stopped <- d
			t.Fatalf("ztunnel exited %v after SIGTERM with a connection open", d)
		default:
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintln(conn, "draining")
		if ans, err := r.ReadString('\n'); err != nil || !strings.Contains(ans, "echo=draining") {
			t.Fatalf("the open connection while ztunnel drains: %q %v", ans, err)
		}
		conn.Close()
		select {
		case d := <-stopped:
			stopped <- d
			t.Logf("ztunnel exited %v after SIGTERM, once the open connection ended", d.Round(time.Millisecond))
		case <-time.After(15 * time.Second):
			t.Fatal("ztunnel still draining 15s after the last connection ended")
		}
	})

	t.Run("after the drain", func(t *testing.T) {
		eventually(t, "A → B after the drained ztunnel", 10*time.Second, expectEcho(ctx, a, toB, "pod-b"))
	})

	t.Run("del closes listeners", func(t *testing.T) {
		snap.remove("uid-b")
		if err := zsrv.DelPod(ctx, "uid-b"); err != nil {
			t.Fatal(err)
		}
		for _, port := range []uint16{15001, 15006, 15008} {
			// From B itself, marked so capture lets it reach the port.
			d := inpodDialer(b.ns)
			dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			conn, err := d.Dial(dctx, "tcp", netip.AddrPortFrom(ipB, port).String())
			cancel()
			if err == nil {
				conn.Close()
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("port %d in B: %v, want connection refused after del", port, err)
			}
		}
		code, body, _ := httpGet("http://" + z.addrs.Admin.String() + "/config_dump")
		if code != 200 || strings.Contains(body, `"uid-b"`) || !strings.Contains(body, `"uid-a"`) {
			t.Errorf("config_dump after del: %s", body)
		}
		// A's listeners are still up.
		eventually(t, "A → C still works", 10*time.Second, expectEcho(ctx, a, toC, "pod-c"))
		// B speaks HBONE per the config but its tunnel end is gone: A's
		// connection must fail even though B's app is now reachable in
		// plaintext (capture removed from B).
		if err := capt.Remove(ctx, b.ns); err != nil {
			t.Fatal(err)
		}
		eventually(t, "C → B plaintext without capture", 10*time.Second, expectEcho(ctx, c, toB, "pod-b"))
		if err := expectFail(ctx, a, toB)(); err != nil {
			t.Errorf("HBONE to B failed over to plaintext: %v", err)
		}
	})
	z.stop()
	for _, p := range []*podNS{a, b} {
		if err := capt.Remove(ctx, p.ns); err != nil {
			t.Errorf("removing capture from %s: %v", p.name, err)
		}
	}
}

// inpodDialer dials from ns with ztunnel's mark.
func inpodDialer(ns *os.File) *netns.Sockets {
	s := netns.Sockets{NS: ns}
	s.Dialer.Control = markCtl
	return &s
}

var markCtl = sockopt.MarkControl(capture.DefaultMark)
