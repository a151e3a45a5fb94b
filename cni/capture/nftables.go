package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// commentPrefix starts the comment that names each rule of ours.
const commentPrefix = "ambit:"

// NFTableName is the inet table NFTables owns in each pod namespace.
const NFTableName = "ambit"

// nftConn is the part of *nftables.Conn the backend uses: the seam at the
// netlink boundary.
type nftConn interface {
	AddTable(*nftables.Table) *nftables.Table
	DelTable(*nftables.Table)
	AddChain(*nftables.Chain) *nftables.Chain
	AddRule(*nftables.Rule) *nftables.Rule
	Flush() error
	ListTablesOfFamily(nftables.TableFamily) ([]*nftables.Table, error)
	ListChainsOfTableFamily(nftables.TableFamily) ([]*nftables.Chain, error)
	GetRules(*nftables.Table, *nftables.Chain) ([]*nftables.Rule, error)
}

// NFTables programs capture with native nftables over netlink opened in the
// pod namespace (no setns). The zero value is ready to use.
type NFTables struct {
	// dial opens a connection to nf_tables in the namespace with that fd;
	// nil means nftables.New(nftables.WithNetNSFd(fd)).
	dial func(nsFd int) (nftConn, error)
}

// Name implements Backend.
func (*NFTables) Name() string { return ModeNFTables }

func (n *NFTables) conn(ns *os.File) (nftConn, error) {
	fd := int(ns.Fd())
	if n.dial != nil {
		return n.dial(fd)
	}
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		return nil, fmt.Errorf("opening nftables in network namespace %s: %w", ns.Name(), err)
	}
	return c, nil
}

var nftTable = &nftables.Table{Name: NFTableName, Family: nftables.TableFamilyINet}

// nftChainSpec is a base chain of our table.
type nftChainSpec struct {
	chain Chain
	hook  *nftables.ChainHook
}

var nftChains = []nftChainSpec{
	{ChainOutput, nftables.ChainHookOutput},
	{ChainPrerouting, nftables.ChainHookPrerouting},
}

func nftChain(spec nftChainSpec) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name:     string(spec.chain),
		Table:    nftTable,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  spec.hook,
		Priority: nftables.ChainPriorityNATDest,
		Policy:   &accept,
	}
}

// Install implements Backend. One netlink batch creates the table if
// missing, deletes it and creates it anew with all chains and rules, so the
// namespace never holds a partial rule set.
func (n *NFTables) Install(ctx context.Context, ns *os.File, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := n.conn(ns)
	if err != nil {
		return err
	}
	rules := Rules(cfg)
	c.AddTable(nftTable)
	c.DelTable(nftTable)
	c.AddTable(nftTable)
	for _, spec := range nftChains {
		ch := c.AddChain(nftChain(spec))
		for _, r := range rules {
			if r.Chain != spec.chain {
				continue
			}
			c.AddRule(&nftables.Rule{Table: nftTable, Chain: ch, Exprs: NFTExprs(r), UserData: nftComment(r.Name)})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("installing nftables capture rules in %s: %w", ns.Name(), err)
	}
	return n.verify(c, ns, rules)
}

// Verify implements Backend.
func (n *NFTables) Verify(ctx context.Context, ns *os.File, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := n.conn(ns)
	if err != nil {
		return err
	}
	return n.verify(c, ns, Rules(cfg))
}

func (n *NFTables) verify(c nftConn, ns *os.File, rules []Rule) error {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("listing nftables tables in %s: %w", ns.Name(), err)
	}
	found := false
	for _, t := range tables {
		found = found || t.Name == NFTableName
	}
	if !found {
		return fmt.Errorf("%w in %s: table inet %s is missing", ErrMismatch, ns.Name(), NFTableName)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("listing nftables chains in %s: %w", ns.Name(), err)
	}
	var problems []string
	for _, spec := range nftChains {
		want := nftChain(spec)
		var got *nftables.Chain
		for _, ch := range chains {
			if ch.Table != nil && ch.Table.Name == NFTableName && ch.Name == want.Name {
				got = ch
			}
		}
		if got == nil {
			problems = append(problems, fmt.Sprintf("chain %s is missing", want.Name))
			continue
		}
		if p := diffChain(want, got); p != "" {
			problems = append(problems, p)
		}
		gotRules, err := c.GetRules(nftTable, want)
		if err != nil {
			return fmt.Errorf("reading nftables rules of chain %s in %s: %w", want.Name, ns.Name(), err)
		}
		problems = append(problems, diffNFTRules(spec.chain, rules, gotRules)...)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w in %s (nftables): %s", ErrMismatch, ns.Name(), strings.Join(problems, "; "))
	}
	return nil
}

func diffChain(want, got *nftables.Chain) string {
	switch {
	case got.Type != want.Type:
		return fmt.Sprintf("chain %s has type %q, want %q", want.Name, got.Type, want.Type)
	case got.Hooknum == nil || *got.Hooknum != *want.Hooknum:
		return fmt.Sprintf("chain %s is not hooked at %d", want.Name, *want.Hooknum)
	case got.Priority == nil || *got.Priority != *want.Priority:
		return fmt.Sprintf("chain %s does not have priority %d", want.Name, *want.Priority)
	case got.Policy != nil && *got.Policy != *want.Policy:
		return fmt.Sprintf("chain %s policy is not accept", want.Name)
	}
	return ""
}

// diffNFTRules compares a chain's rules with the expected ones by name and
// by their netlink encoding, which is what the kernel executes.
func diffNFTRules(chain Chain, rules []Rule, got []*nftables.Rule) []string {
	var want []Rule
	for _, r := range rules {
		if r.Chain == chain {
			want = append(want, r)
		}
	}
	var problems []string
	gotNames := make([]string, len(got))
	byName := map[string]*nftables.Rule{}
	for i, g := range got {
		comment, _ := userdata.GetString(g.UserData, userdata.TypeComment)
		name := strings.TrimPrefix(comment, commentPrefix)
		gotNames[i] = name
		if _, dup := byName[name]; dup || name == "" {
			problems = append(problems, fmt.Sprintf("unexpected rule %q (handle %d) in chain %s", name, g.Handle, chain))
			continue
		}
		byName[name] = g
	}
	wantNames := make(map[string]bool, len(want))
	for _, w := range want {
		wantNames[w.Name] = true
		g, ok := byName[w.Name]
		if !ok {
			problems = append(problems, fmt.Sprintf("rule %s is missing from chain %s", w.Name, chain))
			continue
		}
		if !sameExprs(NFTExprs(w), g.Exprs) {
			problems = append(problems, fmt.Sprintf("rule %s in chain %s differs from the expected rule", w.Name, chain))
		}
	}
	for name, g := range byName {
		if !wantNames[name] {
			problems = append(problems, fmt.Sprintf("unexpected rule %q (handle %d) in chain %s", name, g.Handle, chain))
		}
	}
	if len(problems) == 0 {
		for i, w := range want {
			if gotNames[i] != w.Name {
				problems = append(problems, fmt.Sprintf("rules of chain %s are out of order: got %v", chain, gotNames))
				break
			}
		}
	}
	return problems
}

func sameExprs(want, got []expr.Any) bool {
	if len(want) != len(got) {
		return false
	}
	for i := range want {
		a, err1 := expr.Marshal(byte(nftables.TableFamilyINet), want[i])
		b, err2 := expr.Marshal(byte(nftables.TableFamilyINet), got[i])
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			return false
		}
	}
	return true
}

// Remove implements Backend: it deletes table inet ambit. Creating the table
// first in the same batch makes the deletion succeed when it is absent.
func (n *NFTables) Remove(ctx context.Context, ns *os.File) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := n.conn(ns)
	if err != nil {
		return err
	}
	c.AddTable(nftTable)
	c.DelTable(nftTable)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("removing nftables capture rules in %s: %w", ns.Name(), err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("listing nftables tables in %s: %w", ns.Name(), err)
	}
	for _, t := range tables {
		if t.Name == NFTableName {
			return fmt.Errorf("removing nftables capture rules in %s: %w", ns.Name(), errors.New("table still present after deletion"))
		}
	}
	return nil
}

func nftComment(name string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, commentPrefix+name)
}

// NFTExprs renders r as nftables expressions for an inet-family table.
func NFTExprs(r Rule) []expr.Any {
	var e []expr.Any
	reg := uint32(1)
	cmp := func(data []byte) expr.Any { return &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: data} }
	family := r.Family
	if family == FamilyAll && (r.Src.IsValid() || r.Dst.IsValid()) {
		family = FamilyIPv4
		if (r.Src.IsValid() && r.Src.Addr().Is6()) || (r.Dst.IsValid() && r.Dst.Addr().Is6()) {
			family = FamilyIPv6
		}
	}
	switch family {
	case FamilyIPv4:
		e = append(e, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg}, cmp([]byte{unix.NFPROTO_IPV4}))
	case FamilyIPv6:
		e = append(e, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg}, cmp([]byte{unix.NFPROTO_IPV6}))
	}
	if r.TCP || r.DstPort != 0 {
		e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, cmp([]byte{unix.IPPROTO_TCP}))
	}
	if r.InIface != "" {
		e = append(e, &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg}, cmp(ifname(r.InIface)))
	}
	if r.OutIface != "" {
		e = append(e, &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg}, cmp(ifname(r.OutIface)))
	}
	addr := func(p netip.Prefix, v4off, v6off uint32) {
		off := v4off
		if p.Addr().Is6() {
			off = v6off
		}
		raw := p.Masked().Addr().AsSlice()
		e = append(e, &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(raw))})
		if p.Bits() < p.Addr().BitLen() {
			mask := net.CIDRMask(p.Bits(), p.Addr().BitLen())
			e = append(e, &expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: uint32(len(raw)), Mask: mask, Xor: make([]byte, len(raw))})
		}
		e = append(e, cmp(raw))
	}
	if r.Src.IsValid() {
		addr(r.Src, 12, 8)
	}
	if r.Dst.IsValid() {
		addr(r.Dst, 16, 24)
	}
	if r.DstPort != 0 {
		e = append(e,
			&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			cmp(binaryutil.BigEndian.PutUint16(r.DstPort)))
	}
	if r.MarkMask != 0 {
		e = append(e, &expr.Meta{Key: expr.MetaKeyMARK, Register: reg})
		if r.MarkMask != 0xffffffff {
			e = append(e, &expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(r.MarkMask), Xor: make([]byte, 4)})
		}
		e = append(e, cmp(binaryutil.NativeEndian.PutUint32(r.Mark)))
	}
	switch r.Action {
	case ActionRedirect:
		e = append(e,
			&expr.Immediate{Register: reg, Data: binaryutil.BigEndian.PutUint16(r.ToPort)},
			&expr.Redir{RegisterProtoMin: reg, RegisterProtoMax: reg, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED})
	default:
		e = append(e, &expr.Verdict{Kind: expr.VerdictReturn})
	}
	return e
}

// ifname pads an interface name to IFNAMSIZ as nft does.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
