package capture

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/ambit-mesh/ambit/pkg/netns"
)

// Chains IPTables owns in the nat table of each family.
const (
	IPTablesOutputChain     = "AMBIT_OUTPUT"
	IPTablesPreroutingChain = "AMBIT_PREROUTING"
)

// iptChains maps our chains to the built-in chain that jumps to each.
var iptChains = []struct {
	chain   Chain
	name    string
	builtin string
}{
	{ChainOutput, IPTablesOutputChain, "OUTPUT"},
	{ChainPrerouting, IPTablesPreroutingChain, "PREROUTING"},
}

// runFunc runs a tool inside the namespace with stdin and returns stdout.
type runFunc func(ctx context.Context, ns *os.File, stdin string, name string, args ...string) (string, error)

// IPTables programs capture with iptables-restore and ip6tables-restore run
// inside the pod namespace, for hosts without nftables. The zero value is
// ready to use.
type IPTables struct {
	// run is the seam at the process boundary; nil means runInNS.
	run runFunc
}

// Name implements Backend.
func (*IPTables) Name() string { return ModeIPTables }

type iptFamily struct {
	family        Family
	restore, save string
}

var iptFamilies = []iptFamily{
	{FamilyIPv4, "iptables-restore", "iptables-save"},
	{FamilyIPv6, "ip6tables-restore", "ip6tables-save"},
}

func (t *IPTables) probe() error {
	for _, tool := range []string{"iptables-restore", "iptables-save"} {
		if _, err := lookTool(tool); err != nil {
			return err
		}
	}
	return nil
}

func (t *IPTables) runner() runFunc {
	if t.run != nil {
		return t.run
	}
	return runInNS
}

// runInNS runs the tool on a thread switched into ns; the child process
// inherits that thread's network namespace.
func runInNS(ctx context.Context, ns *os.File, stdin string, name string, args ...string) (string, error) {
	path, err := lookTool(name)
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	err = netns.Do(ns, func() error {
		cmd := exec.CommandContext(ctx, path, args...)
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		return cmd.Run()
	})
	if err != nil {
		return "", fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), ns.Name(), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// families returns the families to program: IPv6 is skipped only when
// ip6tables is missing and the namespace has IPv6 disabled.
func (t *IPTables) families(ctx context.Context, ns *os.File) ([]iptFamily, error) {
	if _, err := lookTool("ip6tables-restore"); err == nil {
		return iptFamilies, nil
	}
	enabled := false
	_ = netns.Do(ns, func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
		enabled = err == nil && strings.TrimSpace(string(b)) == "0"
		return nil
	})
	if enabled {
		return nil, fmt.Errorf("ip6tables-restore not found but IPv6 is enabled in %s: install ip6tables (package iptables) so IPv6 traffic is captured", ns.Name())
	}
	return iptFamilies[:1], nil
}

// Install implements Backend. Per family, one iptables-restore --noflush
// transaction (re)declares our chains, which flushes them, fills them and
// adds the jumps from the built-in chains if they are missing.
func (t *IPTables) Install(ctx context.Context, ns *os.File, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	fams, err := t.families(ctx, ns)
	if err != nil {
		return err
	}
	rules := Rules(cfg)
	run := t.runner()
	for _, f := range fams {
		saved, err := run(ctx, ns, "", f.save, "-t", "nat")
		if err != nil {
			return fmt.Errorf("installing iptables capture rules: %w", err)
		}
		input := iptablesRestoreInput(rules, f.family, parseIPTablesSave(saved))
		if _, err := run(ctx, ns, input, f.restore, "-w", "--noflush"); err != nil {
			return fmt.Errorf("installing iptables capture rules: %w", err)
		}
	}
	return t.verify(ctx, ns, rules, fams)
}

// Verify implements Backend.
func (t *IPTables) Verify(ctx context.Context, ns *os.File, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	fams, err := t.families(ctx, ns)
	if err != nil {
		return err
	}
	return t.verify(ctx, ns, Rules(cfg), fams)
}

func (t *IPTables) verify(ctx context.Context, ns *os.File, rules []Rule, fams []iptFamily) error {
	run := t.runner()
	var problems []string
	for _, f := range fams {
		saved, err := run(ctx, ns, "", f.save, "-t", "nat")
		if err != nil {
			return fmt.Errorf("verifying iptables capture rules: %w", err)
		}
		problems = append(problems, diffIPTables(rules, f, parseIPTablesSave(saved))...)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w in %s (iptables): %s", ErrMismatch, ns.Name(), strings.Join(problems, "; "))
	}
	return nil
}

func diffIPTables(rules []Rule, f iptFamily, st iptState) []string {
	var problems []string
	for _, c := range iptChains {
		if !st.chains[c.name] {
			problems = append(problems, fmt.Sprintf("%s: chain %s is missing", f.save, c.name))
			continue
		}
		if st.jumps[c.builtin] == 0 {
			problems = append(problems, fmt.Sprintf("%s: jump from %s to %s is missing", f.save, c.builtin, c.name))
		}
		want := RulesOf(rules, c.chain, f.family)
		got := st.rules[c.name]
		gotSet := map[string]bool{}
		for _, g := range got {
			gotSet[g] = true
		}
		wantSet := map[string]bool{}
		for _, w := range want {
			line := IPTablesRule(w, c.name)
			wantSet[line] = true
			if !gotSet[line] {
				problems = append(problems, fmt.Sprintf("%s: rule %s is missing from %s (want %q)", f.save, w.Name, c.name, line))
			}
		}
		for _, g := range got {
			if !wantSet[g] {
				problems = append(problems, fmt.Sprintf("%s: unexpected rule in %s: %q", f.save, c.name, g))
			}
		}
		if len(problems) == 0 && len(got) == len(want) {
			for i := range want {
				if got[i] != IPTablesRule(want[i], c.name) {
					problems = append(problems, fmt.Sprintf("%s: rules of %s are out of order", f.save, c.name))
					break
				}
			}
		}
	}
	return problems
}

// Remove implements Backend.
func (t *IPTables) Remove(ctx context.Context, ns *os.File) error {
	run := t.runner()
	for _, f := range iptFamilies {
		if _, err := lookTool(f.restore); err != nil {
			if f.family == FamilyIPv6 {
				continue // nothing of ours can be there without the tool
			}
			return fmt.Errorf("removing iptables capture rules: %w", err)
		}
		saved, err := run(ctx, ns, "", f.save, "-t", "nat")
		if err != nil {
			return fmt.Errorf("removing iptables capture rules: %w", err)
		}
		input := iptablesRemoveInput(parseIPTablesSave(saved))
		if input == "" {
			continue
		}
		if _, err := run(ctx, ns, input, f.restore, "-w", "--noflush"); err != nil {
			return fmt.Errorf("removing iptables capture rules: %w", err)
		}
	}
	return nil
}

// iptState is what iptables-save -t nat shows of ours.
type iptState struct {
	chains map[string]bool     // our chains declared
	jumps  map[string]int      // built-in chain -> jumps to our chain
	rules  map[string][]string // our chain -> its -A lines, in order
}

func parseIPTablesSave(out string) iptState {
	st := iptState{chains: map[string]bool{}, jumps: map[string]int{}, rules: map[string][]string{}}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		for _, c := range iptChains {
			switch {
			case strings.HasPrefix(line, ":"+c.name+" "):
				st.chains[c.name] = true
			case line == "-A "+c.builtin+" -j "+c.name:
				st.jumps[c.builtin]++
			case strings.HasPrefix(line, "-A "+c.name+" "):
				st.rules[c.name] = append(st.rules[c.name], line)
			}
		}
	}
	return st
}

// iptablesRestoreInput returns the iptables-restore --noflush input that
// installs the rules of one family, given what is there now.
func iptablesRestoreInput(rules []Rule, family Family, now iptState) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, c := range iptChains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c.name)
	}
	for _, c := range iptChains {
		if now.jumps[c.builtin] == 0 {
			fmt.Fprintf(&b, "-I %s 1 -j %s\n", c.builtin, c.name)
		}
	}
	for _, c := range iptChains {
		for _, r := range RulesOf(rules, c.chain, family) {
			b.WriteString(IPTablesRule(r, c.name))
			b.WriteByte('\n')
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func iptablesRemoveInput(now iptState) string {
	var b strings.Builder
	any := false
	for _, c := range iptChains {
		any = any || now.chains[c.name] || now.jumps[c.builtin] > 0
	}
	if !any {
		return ""
	}
	b.WriteString("*nat\n")
	for _, c := range iptChains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c.name)
	}
	for _, c := range iptChains {
		for range now.jumps[c.builtin] {
			fmt.Fprintf(&b, "-D %s -j %s\n", c.builtin, c.name)
		}
	}
	for _, c := range iptChains {
		fmt.Fprintf(&b, "-X %s\n", c.name)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// IPTablesRule renders r as an "-A chain ..." line in the canonical form
// iptables-save prints, so verification can compare lines.
func IPTablesRule(r Rule, chain string) string {
	parts := []string{"-A", chain}
	if r.Src.IsValid() {
		parts = append(parts, "-s", r.Src.Masked().String())
	}
	if r.Dst.IsValid() {
		parts = append(parts, "-d", r.Dst.Masked().String())
	}
	if r.InIface != "" {
		parts = append(parts, "-i", r.InIface)
	}
	if r.OutIface != "" {
		parts = append(parts, "-o", r.OutIface)
	}
	if r.TCP || r.DstPort != 0 {
		parts = append(parts, "-p", "tcp")
	}
	if r.DstPort != 0 {
		parts = append(parts, "-m", "tcp", "--dport", fmt.Sprint(r.DstPort))
	}
	if r.MarkMask != 0 {
		mark := fmt.Sprintf("%#x", r.Mark)
		if r.MarkMask != 0xffffffff {
			mark += fmt.Sprintf("/%#x", r.MarkMask)
		}
		parts = append(parts, "-m", "mark", "--mark", mark)
	}
	parts = append(parts, "-m", "comment", "--comment", `"ambit:`+r.Name+`"`)
	switch r.Action {
	case ActionRedirect:
		parts = append(parts, "-j", "REDIRECT", "--to-ports", fmt.Sprint(r.ToPort))
	default:
		parts = append(parts, "-j", "RETURN")
	}
	return strings.Join(parts, " ")
}
