package capture

import (
	"fmt"
	"net/netip"
)

// Chain is where a rule applies.
type Chain string

const (
	// ChainOutput sees connections the pod opens (nat OUTPUT).
	ChainOutput Chain = "output"
	// ChainPrerouting sees connections arriving at the pod (nat PREROUTING).
	ChainPrerouting Chain = "prerouting"
)

// Family restricts a rule to one IP version.
type Family int

const (
	FamilyAll Family = iota
	FamilyIPv4
	FamilyIPv6
)

func (f Family) String() string {
	switch f {
	case FamilyIPv4:
		return "ipv4"
	case FamilyIPv6:
		return "ipv6"
	default:
		return "all"
	}
}

// Action is what a matching rule does.
type Action int

const (
	// ActionReturn ends capture processing for the connection: it is not
	// redirected.
	ActionReturn Action = iota
	// ActionRedirect redirects the connection to local port ToPort.
	ActionRedirect
)

// Rule is one backend-independent capture rule. All set matches must hold.
type Rule struct {
	// Name identifies the rule in verification errors and is stored with it
	// (nftables comment, iptables comment).
	Name  string
	Chain Chain
	// Family is FamilyIPv4 or FamilyIPv6 when Src or Dst is set.
	Family   Family
	TCP      bool
	InIface  string
	OutIface string
	Src, Dst netip.Prefix
	// DstPort matches the TCP destination port; TCP is then true.
	DstPort uint16
	// MarkMask != 0 matches packets whose mark&MarkMask == Mark.
	Mark, MarkMask uint32
	Action         Action
	ToPort         uint16
}

// Rules returns the capture rules for cfg (defaults applied), in order,
// output chain first. It is the single source of truth both backends render.
func Rules(cfg Config) []Rule {
	c := cfg.WithDefaults()
	v4 := netip.PrefixFrom(c.ProbeSourceV4, 32)
	v6 := netip.PrefixFrom(c.ProbeSourceV6, 128)
	return []Rule{
		{Name: "out-ztunnel-mark", Chain: ChainOutput, TCP: true, Mark: c.Mark, MarkMask: c.MarkMask, Action: ActionReturn},
		{Name: "out-loopback", Chain: ChainOutput, OutIface: "lo", Action: ActionReturn},
		{Name: "out-probe-v4", Chain: ChainOutput, Family: FamilyIPv4, TCP: true, Dst: v4, Action: ActionReturn},
		{Name: "out-probe-v6", Chain: ChainOutput, Family: FamilyIPv6, TCP: true, Dst: v6, Action: ActionReturn},
		{Name: "out-redirect", Chain: ChainOutput, TCP: true, Action: ActionRedirect, ToPort: c.OutboundPort},

		{Name: "in-loopback", Chain: ChainPrerouting, InIface: "lo", Action: ActionReturn},
		{Name: "in-probe-v4", Chain: ChainPrerouting, Family: FamilyIPv4, TCP: true, Src: v4, Action: ActionReturn},
		{Name: "in-probe-v6", Chain: ChainPrerouting, Family: FamilyIPv6, TCP: true, Src: v6, Action: ActionReturn},
		{Name: "in-hbone", Chain: ChainPrerouting, TCP: true, DstPort: c.HBONEPort, Action: ActionReturn},
		{Name: "in-redirect", Chain: ChainPrerouting, TCP: true, Action: ActionRedirect, ToPort: c.InboundPort},
	}
}

// RulesOf returns the rules of one chain that apply to family (FamilyIPv4 or
// FamilyIPv6), in order.
func RulesOf(rules []Rule, chain Chain, family Family) []Rule {
	var out []Rule
	for _, r := range rules {
		if r.Chain == chain && (r.Family == FamilyAll || r.Family == family) {
			out = append(out, r)
		}
	}
	return out
}

func (r Rule) String() string {
	return fmt.Sprintf("%s (chain %s, %s)", r.Name, r.Chain, r.Family)
}
