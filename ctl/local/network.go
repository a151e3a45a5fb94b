package local

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"

	"github.com/ambit-mesh/ambit/ctl/local/topology"
	"github.com/ambit-mesh/ambit/pkg/netns"
)

// prefixNet converts a netip.Prefix holding a host address to a netlink
// address.
func addrOf(ip netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, ip.BitLen())}}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func linkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding link %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	return nil
}

// sysctl writes a /proc/sys value of the calling thread's network
// namespace; call it inside netns.Do.
func sysctl(path, val string) error {
	if err := os.WriteFile("/proc/sys/"+path, []byte(val), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", path, val, err)
	}
	return nil
}

// createBackbone creates ambitl-net with the bridge br0 at 172.30.0.1/24.
func createBackbone() error {
	ns, err := netns.Create(BackboneNetns)
	if err != nil {
		return err
	}
	defer ns.Close()
	return netns.Do(ns, func() error {
		if err := linkUp("lo"); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BackboneBridge}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("creating bridge %s: %w", BackboneBridge, err)
		}
		if err := netlink.AddrAdd(br, addrOf(BackboneIP, BackboneSubnet.Bits())); err != nil {
			return fmt.Errorf("addressing %s: %w", BackboneBridge, err)
		}
		return linkUp(BackboneBridge)
	})
}

// createNode creates node i's namespace, joins it to the backbone with a
// veth (eth0, 172.30.0.(10+i)/24) and routes the other nodes' pod CIDRs
// through their backbone addresses.
func createNode(t *topology.Topology, i int) error {
	name := t.Nodes[i].Name
	ns, err := netns.Create(NodeNetns(name))
	if err != nil {
		return err
	}
	defer ns.Close()
	bb, err := netns.OpenName(BackboneNetns)
	if err != nil {
		return err
	}
	defer bb.Close()
	hostEnd := fmt.Sprintf("vn%d", i)
	err = netns.Do(bb, func() error {
		br, err := netlink.LinkByName(BackboneBridge)
		if err != nil {
			return fmt.Errorf("finding %s: %w", BackboneBridge, err)
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: hostEnd, MasterIndex: br.Attrs().Index},
			PeerName:      NodeIfName,
			PeerNamespace: netlink.NsFd(int(ns.Fd())),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating veth %s for node %s: %w", hostEnd, name, err)
		}
		return linkUp(hostEnd)
	})
	if err != nil {
		return err
	}
	return netns.Do(ns, func() error {
		if err := linkUp("lo"); err != nil {
			return err
		}
		eth, err := netlink.LinkByName(NodeIfName)
		if err != nil {
			return fmt.Errorf("finding %s in node %s: %w", NodeIfName, name, err)
		}
		if err := netlink.AddrAdd(eth, addrOf(NodeIP(i), BackboneSubnet.Bits())); err != nil {
			return fmt.Errorf("addressing node %s: %w", name, err)
		}
		if err := netlink.LinkSetUp(eth); err != nil {
			return err
		}
		for j := range t.Nodes {
			if j == i {
				continue
			}
			r := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(PodCIDR(j)), Gw: NodeIP(j).AsSlice()}
			if err := netlink.RouteAdd(r); err != nil {
				return fmt.Errorf("routing %s via %s in node %s: %w", PodCIDR(j), NodeIP(j), name, err)
			}
		}
		return errors.Join(sysctl("net/ipv4/ip_forward", "1"), sysctl("net/ipv4/conf/all/rp_filter", "0"))
	})
}
