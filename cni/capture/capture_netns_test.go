package capture_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/ambit-mesh/ambit/cni/capture"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
	"github.com/ambit-mesh/ambit/pkg/sockopt"
)

const prefix = "ambit-t-cap-"

func TestMain(m *testing.M) { netnstest.Main(m, prefix) }

// Addresses exist only inside the test's own namespaces.
var (
	podV4  = netip.MustParseAddr("192.0.2.1")
	peerV4 = netip.MustParseAddr("192.0.2.2")
	podV6  = netip.MustParseAddr("fd00:a3b1::1")
	peerV6 = netip.MustParseAddr("fd00:a3b1::2")
)

// topo is a pod namespace wired to a peer namespace by a veth pair.
type topo struct {
	pod, peer *os.File
}

func newTopo(t *testing.T, tag string) *topo {
	t.Helper()
	netnstest.RequireRoot(t)
	tp := &topo{
		pod:  netnstest.New(t, prefix+tag+"-pod"),
		peer: netnstest.New(t, prefix+tag+"-peer"),
	}
	podH, err := netlink.NewHandleAt(vnetns.NsHandle(int(tp.pod.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer podH.Close()
	peerH, err := netlink.NewHandleAt(vnetns.NsHandle(int(tp.peer.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer peerH.Close()

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: "eth0"},
		PeerName:      "peer0",
		PeerNamespace: netlink.NsFd(int(tp.peer.Fd())),
	}
	if err := podH.LinkAdd(veth); err != nil {
		t.Fatalf("creating veth in pod namespace: %v", err)
	}
	setup := func(h *netlink.Handle, link string, addrs []netip.Prefix, routes []netip.Prefix) {
		t.Helper()
		for _, name := range []string{"lo", link} {
			l, err := h.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
		l, _ := h.LinkByName(link)
		for _, p := range addrs {
			a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
			if p.Addr().Is6() {
				a.Flags = 0x02 // IFA_F_NODAD: usable at once
			}
			if err := h.AddrAdd(l, a); err != nil {
				t.Fatalf("adding %s to %s: %v", p, link, err)
			}
		}
		for _, p := range routes {
			r := &netlink.Route{LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK,
				Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
			if err := h.RouteAdd(r); err != nil {
				t.Fatalf("adding route %s via %s: %v", p, link, err)
			}
		}
	}
	setup(podH, "eth0",
		[]netip.Prefix{netip.PrefixFrom(podV4, 24), netip.PrefixFrom(podV6, 64)},
		[]netip.Prefix{netip.PrefixFrom(capture.DefaultProbeSourceV4, 32), netip.PrefixFrom(capture.DefaultProbeSourceV6, 128)})
	setup(peerH, "peer0",
		[]netip.Prefix{netip.PrefixFrom(peerV4, 24), netip.PrefixFrom(peerV6, 64),
			netip.PrefixFrom(capture.DefaultProbeSourceV4, 32), netip.PrefixFrom(capture.DefaultProbeSourceV6, 128)},
		nil)
	return tp
}

// serve listens on [::]:port in ns (dual stack). Each connection gets one
// line: label, plus the original destination when withOrigDst.
func serve(t *testing.T, ns *os.File, port int, label string, withOrigDst bool) {
	t.Helper()
	s := netns.Sockets{NS: ns}
	s.ListenConfig.SetMultipathTCP(false)
	ln, err := s.Listen(context.Background(), "tcp", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			msg := label
			if withOrigDst {
				od, err := sockopt.OriginalDst(c)
				if err != nil {
					msg += " error:" + strings.ReplaceAll(err.Error(), " ", "_")
				} else {
					msg += " " + od.String()
				}
			}
			_, _ = c.Write([]byte(msg + "\n"))
			c.Close()
		}
	}()
}

// ask connects from ns and returns the line the accepting listener sent.
func ask(t *testing.T, ns *os.File, d net.Dialer, to netip.AddrPort) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s := netns.Sockets{NS: ns, Dialer: d}
	c, err := s.Dial(ctx, "tcp", to.String())
	if err != nil {
		return "dial-error"
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "read-error: " + err.Error()
	}
	return strings.TrimSpace(line)
}

type check struct {
	name string
	from string // "pod" or "peer"
	d    net.Dialer
	to   netip.AddrPort
	want string
}

func (tp *topo) run(t *testing.T, checks []check) {
	t.Helper()
	for _, c := range checks {
		ns := tp.pod
		if c.from == "peer" {
			ns = tp.peer
		}
		if got := ask(t, ns, c.d, c.to); got != c.want {
			t.Errorf("%s: %s → %s answered %q, want %q", c.name, c.from, c.to, got, c.want)
		}
	}
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

func capturedChecks() []check {
	marked := net.Dialer{Control: sockopt.MarkControl(capture.DefaultMark)}
	probe4 := net.Dialer{LocalAddr: &net.TCPAddr{IP: capture.DefaultProbeSourceV4.AsSlice()}}
	probe6 := net.Dialer{LocalAddr: &net.TCPAddr{IP: capture.DefaultProbeSourceV6.AsSlice()}}
	lo4, lo6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
	return []check{
		{"outbound v4 redirected", "pod", net.Dialer{}, ap(peerV4, 8080), "outbound " + ap(peerV4, 8080).String()},
		{"outbound v6 redirected", "pod", net.Dialer{}, ap(peerV6, 8080), "outbound " + ap(peerV6, 8080).String()},
		{"ztunnel mark v4 direct", "pod", marked, ap(peerV4, 8080), "peer-8080"},
		{"ztunnel mark v6 direct", "pod", marked, ap(peerV6, 8080), "peer-8080"},
		{"localhost v4 direct", "pod", net.Dialer{}, ap(lo4, 9090), "app-9090"},
		{"localhost v6 direct", "pod", net.Dialer{}, ap(lo6, 9090), "app-9090"},
		{"own address direct", "pod", net.Dialer{}, ap(podV4, 9090), "app-9090"},
		{"inbound v4 redirected", "peer", net.Dialer{}, ap(podV4, 9090), "inbound " + ap(podV4, 9090).String()},
		{"inbound v6 redirected", "peer", net.Dialer{}, ap(podV6, 9090), "inbound " + ap(podV6, 9090).String()},
		{"inbound HBONE v4 direct", "peer", net.Dialer{}, ap(podV4, 15008), "hbone"},
		{"inbound HBONE v6 direct", "peer", net.Dialer{}, ap(podV6, 15008), "hbone"},
		{"probe v4 direct", "peer", probe4, ap(podV4, 9090), "app-9090"},
		{"probe v6 direct", "peer", probe6, ap(podV6, 9090), "app-9090"},
	}
}

func directChecks() []check {
	return []check{
		{"outbound v4 direct", "pod", net.Dialer{}, ap(peerV4, 8080), "peer-8080"},
		{"outbound v6 direct", "pod", net.Dialer{}, ap(peerV6, 8080), "peer-8080"},
		{"inbound v4 direct", "peer", net.Dialer{}, ap(podV4, 9090), "app-9090"},
		{"inbound v6 direct", "peer", net.Dialer{}, ap(podV6, 9090), "app-9090"},
	}
}

// inNS runs a command inside ns and returns its output.
func inNS(t *testing.T, ns *os.File, name string, args ...string) string {
	t.Helper()
	var out []byte
	err := netns.Do(ns, func() error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
	return string(out)
}

func newBackend(t *testing.T, mode string) capture.Backend {
	t.Helper()
	b, err := capture.New(mode)
	if errors.Is(err, capture.ErrUnsupported) {
		netnstest.SkipOrFail(t, "%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// leftovers reports what of ours the namespace still holds.
func leftovers(t *testing.T, ns *os.File, mode string) string {
	t.Helper()
	var out string
	switch mode {
	case capture.ModeNFTables:
		out = inNS(t, ns, "nft", "list", "tables")
	case capture.ModeIPTables:
		out = inNS(t, ns, "iptables-save") + inNS(t, ns, "ip6tables-save")
	}
	var ours []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(strings.ToLower(l), "ambit") {
			ours = append(ours, l)
		}
	}
	return strings.Join(ours, "\n")
}

func TestCaptureTraffic(t *testing.T) {
	for _, mode := range []string{capture.ModeNFTables, capture.ModeIPTables} {
		t.Run(mode, func(t *testing.T) {
			netnstest.RequireRoot(t)
			b := newBackend(t, mode)
			tp := newTopo(t, mode[:3]+"-tr")
			serve(t, tp.pod, 15001, "outbound", true)
			serve(t, tp.pod, 15006, "inbound", true)
			serve(t, tp.pod, 15008, "hbone", false)
			serve(t, tp.pod, 9090, "app-9090", false)
			serve(t, tp.peer, 8080, "peer-8080", false)
			ctx := context.Background()

			tp.run(t, directChecks())
			if err := b.Remove(ctx, tp.pod); err != nil {
				t.Fatalf("Remove on a clean namespace: %v", err)
			}
			if err := b.Install(ctx, tp.pod, capture.Config{}); err != nil {
				t.Fatalf("Install: %v", err)
			}
			if err := b.Verify(ctx, tp.pod, capture.Config{}); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			tp.run(t, capturedChecks())

			if err := b.Remove(ctx, tp.pod); err != nil {
				t.Fatalf("Remove: %v", err)
			}
			if left := leftovers(t, tp.pod, mode); left != "" {
				t.Fatalf("after Remove the namespace still holds:\n%s", left)
			}
			if err := b.Verify(ctx, tp.pod, capture.Config{}); !errors.Is(err, capture.ErrMismatch) {
				t.Fatalf("Verify after Remove = %v, want ErrMismatch", err)
			}
			tp.run(t, directChecks())
			if err := b.Remove(ctx, tp.pod); err != nil {
				t.Fatalf("second Remove: %v", err)
			}
		})
	}
}

func TestIdempotentAndRepair(t *testing.T) {
	for _, mode := range []string{capture.ModeNFTables, capture.ModeIPTables} {
		t.Run(mode, func(t *testing.T) {
			netnstest.RequireRoot(t)
			b := newBackend(t, mode)
			tp := newTopo(t, mode[:3]+"-id")
			ctx := context.Background()
			cfg := capture.Config{}
			if err := b.Install(ctx, tp.pod, cfg); err != nil {
				t.Fatalf("Install: %v", err)
			}
			first := dump(t, tp.pod, mode)
			if err := b.Install(ctx, tp.pod, cfg); err != nil {
				t.Fatalf("second Install: %v", err)
			}
			if second := dump(t, tp.pod, mode); second != first {
				t.Fatalf("second Install changed the rules:\nfirst:\n%s\nsecond:\n%s", first, second)
			}

			deleteRule(t, tp.pod, mode, "out-redirect")
			err := b.Verify(ctx, tp.pod, cfg)
			if !errors.Is(err, capture.ErrMismatch) || !strings.Contains(err.Error(), "out-redirect") {
				t.Fatalf("Verify after tampering = %v, want ErrMismatch naming out-redirect", err)
			}
			if err := b.Install(ctx, tp.pod, cfg); err != nil {
				t.Fatalf("repairing Install: %v", err)
			}
			if got := dump(t, tp.pod, mode); got != first {
				t.Fatalf("repaired rules differ:\nwant:\n%s\ngot:\n%s", first, got)
			}

			// A different config is a mismatch until installed.
			other := capture.Config{OutboundPort: 16001}
			if err := b.Verify(ctx, tp.pod, other); !errors.Is(err, capture.ErrMismatch) {
				t.Fatalf("Verify with another config = %v, want ErrMismatch", err)
			}
			if err := b.Install(ctx, tp.pod, other); err != nil {
				t.Fatalf("Install of another config: %v", err)
			}
			if err := b.Remove(ctx, tp.pod); err != nil {
				t.Fatal(err)
			}
			if left := leftovers(t, tp.pod, mode); left != "" {
				t.Fatalf("after Remove the namespace still holds:\n%s", left)
			}
		})
	}
}

// dump returns our rules as the CLI shows them, with counters and handles
// left out.
func dump(t *testing.T, ns *os.File, mode string) string {
	t.Helper()
	if mode == capture.ModeNFTables {
		return inNS(t, ns, "nft", "list", "table", "inet", capture.NFTableName)
	}
	var lines []string
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		for _, l := range strings.Split(inNS(t, ns, tool, "-t", "nat"), "\n") {
			if strings.Contains(l, "AMBIT") {
				lines = append(lines, tool+": "+l)
			}
		}
	}
	return strings.Join(lines, "\n")
}

// deleteRule deletes one of our rules behind the backend's back.
func deleteRule(t *testing.T, ns *os.File, mode, name string) {
	t.Helper()
	if mode == capture.ModeIPTables {
		for _, l := range strings.Split(inNS(t, ns, "iptables-save", "-t", "nat"), "\n") {
			if strings.Contains(l, `"ambit:`+name+`"`) {
				args := append([]string{"-t", "nat", "-D"}, splitRule(strings.TrimPrefix(l, "-A "))...)
				inNS(t, ns, "iptables", args...)
				return
			}
		}
		t.Fatalf("rule %s not found", name)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	table := &nftables.Table{Name: capture.NFTableName, Family: nftables.TableFamilyINet}
	for _, chain := range []string{"output", "prerouting"} {
		rules, err := c.GetRules(table, &nftables.Chain{Name: chain, Table: table})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			if cm, _ := userdata.GetString(r.UserData, userdata.TypeComment); cm == "ambit:"+name {
				if err := c.DelRule(r); err != nil {
					t.Fatal(err)
				}
				if err := c.Flush(); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
	}
	t.Fatalf("rule %s not found", name)
}

// splitRule splits an iptables-save rule into arguments, unquoting "...".
func splitRule(s string) []string {
	var out []string
	for _, f := range strings.Fields(s) {
		out = append(out, strings.Trim(f, `"`))
	}
	return out
}

func TestNewModes(t *testing.T) {
	if _, err := capture.New("ebpf-maybe"); !errors.Is(err, capture.ErrUnknownMode) {
		t.Fatalf("New(unknown) = %v, want ErrUnknownMode", err)
	}
	netnstest.RequireRoot(t)
	for _, mode := range []string{"", capture.ModeAuto, capture.ModeNFTables, capture.ModeIPTables} {
		b, err := capture.New(mode)
		if err != nil {
			netnstest.SkipOrFail(t, "New(%q): %v", mode, err)
		}
		if mode == "" || mode == capture.ModeAuto {
			if b.Name() != capture.ModeNFTables {
				t.Errorf("auto picked %s on a host with nftables", b.Name())
			}
		} else if b.Name() != mode {
			t.Errorf("New(%q).Name() = %s", mode, b.Name())
		}
	}
}
