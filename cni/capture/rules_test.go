package capture

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"

	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Fatalf("%s differs (-want +got):\n%s", path, d)
	}
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	d := Config{}.WithDefaults()
	want := Config{OutboundPort: 15001, InboundPort: 15006, HBONEPort: 15008, Mark: 0x539, MarkMask: 0xfff,
		ProbeSourceV4: netip.MustParseAddr("169.254.7.127"), ProbeSourceV6: netip.MustParseAddr("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")}
	if d != want {
		t.Fatalf("defaults = %+v, want %+v", d, want)
	}
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero", Config{}, true},
		{"custom", Config{OutboundPort: 1, InboundPort: 2, HBONEPort: 3, Mark: 7, MarkMask: 0xffffffff}, true},
		{"same ports", Config{OutboundPort: 15006}, false},
		{"hbone equals inbound", Config{HBONEPort: 15006}, false},
		{"mark outside mask", Config{Mark: 0x1539}, false},
		{"v6 as v4 probe", Config{ProbeSourceV4: netip.MustParseAddr("::1")}, false},
		{"v4 as v6 probe", Config{ProbeSourceV6: netip.MustParseAddr("10.0.0.1")}, false},
		{"mapped v6 probe", Config{ProbeSourceV6: netip.MustParseAddr("::ffff:10.0.0.1")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func TestRules(t *testing.T) {
	v4 := netip.MustParsePrefix("169.254.7.127/32")
	v6 := netip.MustParsePrefix("fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128")
	want := []Rule{
		{Name: "out-ztunnel-mark", Chain: ChainOutput, TCP: true, Mark: 0x539, MarkMask: 0xfff},
		{Name: "out-loopback", Chain: ChainOutput, OutIface: "lo"},
		{Name: "out-probe-v4", Chain: ChainOutput, Family: FamilyIPv4, TCP: true, Dst: v4},
		{Name: "out-probe-v6", Chain: ChainOutput, Family: FamilyIPv6, TCP: true, Dst: v6},
		{Name: "out-redirect", Chain: ChainOutput, TCP: true, Action: ActionRedirect, ToPort: 15001},
		{Name: "in-loopback", Chain: ChainPrerouting, InIface: "lo"},
		{Name: "in-probe-v4", Chain: ChainPrerouting, Family: FamilyIPv4, TCP: true, Src: v4},
		{Name: "in-probe-v6", Chain: ChainPrerouting, Family: FamilyIPv6, TCP: true, Src: v6},
		{Name: "in-hbone", Chain: ChainPrerouting, TCP: true, DstPort: 15008},
		{Name: "in-redirect", Chain: ChainPrerouting, TCP: true, Action: ActionRedirect, ToPort: 15006},
	}
	if d := cmp.Diff(want, Rules(Config{}), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Fatalf("Rules(defaults) (-want +got):\n%s", d)
	}

	custom := Rules(Config{OutboundPort: 25001, InboundPort: 25006, HBONEPort: 25008, Mark: 0x42, MarkMask: 0xff,
		ProbeSourceV4: netip.MustParseAddr("169.254.1.1"), ProbeSourceV6: netip.MustParseAddr("fd00::9")})
	byName := map[string]Rule{}
	for _, r := range custom {
		byName[r.Name] = r
	}
	if r := byName["out-redirect"]; r.ToPort != 25001 {
		t.Errorf("out-redirect to %d", r.ToPort)
	}
	if r := byName["in-redirect"]; r.ToPort != 25006 {
		t.Errorf("in-redirect to %d", r.ToPort)
	}
	if r := byName["in-hbone"]; r.DstPort != 25008 {
		t.Errorf("in-hbone port %d", r.DstPort)
	}
	if r := byName["out-ztunnel-mark"]; r.Mark != 0x42 || r.MarkMask != 0xff {
		t.Errorf("mark %#x/%#x", r.Mark, r.MarkMask)
	}
	if r := byName["in-probe-v4"]; r.Src.String() != "169.254.1.1/32" {
		t.Errorf("probe v4 %s", r.Src)
	}
	if r := byName["in-probe-v6"]; r.Src.String() != "fd00::9/128" {
		t.Errorf("probe v6 %s", r.Src)
	}

	// Each family sees the family-neutral rules plus its own.
	for _, f := range []Family{FamilyIPv4, FamilyIPv6} {
		var names []string
		for _, r := range RulesOf(Rules(Config{}), ChainOutput, f) {
			names = append(names, r.Name)
		}
		probe := "out-probe-v4"
		if f == FamilyIPv6 {
			probe = "out-probe-v6"
		}
		if d := cmp.Diff([]string{"out-ztunnel-mark", "out-loopback", probe, "out-redirect"}, names); d != "" {
			t.Errorf("RulesOf(output, %s) (-want +got):\n%s", f, d)
		}
	}
}

func TestIPTablesGolden(t *testing.T) {
	rules := Rules(Config{})
	var b strings.Builder
	for _, f := range []Family{FamilyIPv4, FamilyIPv6} {
		fmt.Fprintf(&b, "# %s, fresh namespace\n", f)
		b.WriteString(iptablesRestoreInput(rules, f, parseIPTablesSave("")))
	}
	b.WriteString("# ipv4, jumps already present\n")
	b.WriteString(iptablesRestoreInput(rules, FamilyIPv4, parseIPTablesSave("-A OUTPUT -j AMBIT_OUTPUT\n-A PREROUTING -j AMBIT_PREROUTING\n")))
	b.WriteString("# removal\n")
	b.WriteString(iptablesRemoveInput(parseIPTablesSave(":AMBIT_OUTPUT - [0:0]\n:AMBIT_PREROUTING - [0:0]\n-A OUTPUT -j AMBIT_OUTPUT\n-A OUTPUT -j AMBIT_OUTPUT\n-A PREROUTING -j AMBIT_PREROUTING\n")))
	golden(t, "iptables.golden", b.String())

	if got := iptablesRemoveInput(parseIPTablesSave("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")); got != "" {
		t.Fatalf("removal input on a clean namespace = %q, want empty", got)
	}
}

func TestNFTablesGolden(t *testing.T) {
	var b strings.Builder
	for _, r := range Rules(Config{}) {
		fmt.Fprintf(&b, "%s %s:\n", r.Chain, r.Name)
		for _, e := range NFTExprs(r) {
			fmt.Fprintf(&b, "\t%#v\n", e)
		}
	}
	golden(t, "nftables.golden", b.String())
}

// saveOf renders what iptables-save would print for rules of one family.
func saveOf(rules []Rule, f Family) string {
	var b strings.Builder
	b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:AMBIT_OUTPUT - [0:0]\n:AMBIT_PREROUTING - [0:0]\n")
	b.WriteString("-A PREROUTING -j AMBIT_PREROUTING\n-A OUTPUT -j AMBIT_OUTPUT\n")
	for _, c := range iptChains {
		for _, r := range RulesOf(rules, c.chain, f) {
			b.WriteString(IPTablesRule(r, c.name) + "\n")
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func TestDiffIPTables(t *testing.T) {
	rules := Rules(Config{})
	v4 := iptFamilies[0]
	if p := diffIPTables(rules, v4, parseIPTablesSave(saveOf(rules, FamilyIPv4))); len(p) != 0 {
		t.Fatalf("diff of identical rules: %v", p)
	}
	tampered := strings.Replace(saveOf(rules, FamilyIPv4), IPTablesRule(rules[4], IPTablesOutputChain)+"\n", "", 1)
	p := diffIPTables(rules, v4, parseIPTablesSave(tampered))
	if len(p) != 1 || !strings.Contains(p[0], "out-redirect") {
		t.Fatalf("diff after deleting out-redirect = %v", p)
	}
	nojump := strings.Replace(saveOf(rules, FamilyIPv4), "-A OUTPUT -j AMBIT_OUTPUT\n", "", 1)
	if p := diffIPTables(rules, v4, parseIPTablesSave(nojump)); len(p) != 1 || !strings.Contains(p[0], "jump from OUTPUT") {
		t.Fatalf("diff without the jump = %v", p)
	}
	if p := diffIPTables(rules, v4, parseIPTablesSave("")); len(p) != 2 {
		t.Fatalf("diff of an empty table = %v, want both chains missing", p)
	}
	extra := strings.Replace(saveOf(rules, FamilyIPv4), "COMMIT", "-A AMBIT_OUTPUT -j ACCEPT\nCOMMIT", 1)
	if p := diffIPTables(rules, v4, parseIPTablesSave(extra)); len(p) != 1 || !strings.Contains(p[0], "unexpected") {
		t.Fatalf("diff with an extra rule = %v", p)
	}
}

func TestDiffNFTRules(t *testing.T) {
	rules := Rules(Config{})
	var got []*nftables.Rule
	for _, r := range RulesOf(rules, ChainOutput, FamilyIPv4) {
		got = append(got, &nftables.Rule{Exprs: NFTExprs(r), UserData: nftComment(r.Name)})
	}
	// RulesOf dropped the v6 probe: it must be reported missing.
	p := diffNFTRules(ChainOutput, rules, got)
	if len(p) != 1 || !strings.Contains(p[0], "out-probe-v6") {
		t.Fatalf("diff = %v, want out-probe-v6 missing", p)
	}
	var all []*nftables.Rule
	for _, r := range rules {
		if r.Chain == ChainOutput {
			all = append(all, &nftables.Rule{Exprs: NFTExprs(r), UserData: nftComment(r.Name)})
		}
	}
	if p := diffNFTRules(ChainOutput, rules, all); len(p) != 0 {
		t.Fatalf("diff of identical rules = %v", p)
	}
	all[0], all[1] = all[1], all[0]
	if p := diffNFTRules(ChainOutput, rules, all); len(p) != 1 || !strings.Contains(p[0], "out of order") {
		t.Fatalf("diff of swapped rules = %v", p)
	}
	all[0], all[1] = all[1], all[0]
	all[4].Exprs = NFTExprs(Rule{Name: "out-redirect", TCP: true, Action: ActionRedirect, ToPort: 1})
	if p := diffNFTRules(ChainOutput, rules, all); len(p) != 1 || !strings.Contains(p[0], "out-redirect") || !strings.Contains(p[0], "differs") {
		t.Fatalf("diff of a changed rule = %v", p)
	}
}

// TestIPTablesInstallFlow drives Install through the process seam.
func TestIPTablesInstallFlow(t *testing.T) {
	state := map[string]string{} // save tool -> its output
	var inputs []string
	ipt := &IPTables{run: func(_ context.Context, _ *os.File, stdin, name string, args ...string) (string, error) {
		switch name {
		case "iptables-save", "ip6tables-save":
			return state[name], nil
		case "iptables-restore", "ip6tables-restore":
			inputs = append(inputs, stdin)
			f := FamilyIPv4
			if name == "ip6tables-restore" {
				f = FamilyIPv6
			}
			state[strings.Replace(name, "restore", "save", 1)] = saveOf(Rules(Config{}), f)
			return "", nil
		}
		return "", errors.New("unexpected tool " + name)
	}}
	if _, err := lookTool("ip6tables-restore"); err != nil {
		netnstest.SkipOrFail(t, "the flow test assumes ip6tables-restore is installed (package iptables): %v", err)
	}
	ns, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	ctx := context.Background()
	if err := ipt.Install(ctx, ns, Config{}); err != nil {
		t.Fatal(err)
	}
	if len(inputs) != 2 || !strings.Contains(inputs[0], "-I OUTPUT 1 -j AMBIT_OUTPUT") {
		t.Fatalf("first install inputs = %q", inputs)
	}
	inputs = nil
	if err := ipt.Install(ctx, ns, Config{}); err != nil {
		t.Fatal(err)
	}
	if len(inputs) != 2 || strings.Contains(inputs[0], "-I OUTPUT") {
		t.Fatalf("second install re-added jumps: %q", inputs)
	}
	if err := ipt.Verify(ctx, ns, Config{OutboundPort: 1}); !errors.Is(err, ErrMismatch) {
		t.Fatalf("Verify of another config = %v", err)
	}
}
