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
	return CreateBridgeNetns(BackboneNetns, BackboneBridge, netip.PrefixFrom(BackboneIP, BackboneSubnet.Bits()))
}

// CreateBridgeNetns creates the network namespace name holding a bridge
// called bridge with the address addr (lo and the bridge up): a backbone
// that CreateNodeNetns joins nodes to.
func CreateBridgeNetns(name, bridge string, addr netip.Prefix) error {
	ns, err := netns.Create(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	return netns.Do(ns, func() error {
		if err := linkUp("lo"); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("creating bridge %s in %s: %w", bridge, name, err)
		}
		if err := netlink.AddrAdd(br, addrOf(addr.Addr(), addr.Bits())); err != nil {
			return fmt.Errorf("addressing %s in %s: %w", bridge, name, err)
		}
		return linkUp(bridge)
	})
}

// Route sends Dst through the gateway Via.
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

// createNode creates node i's namespace, joins it to the backbone with a
// veth (eth0, 172.30.0.(10+i)/24) and routes the other nodes' pod CIDRs
// through their backbone addresses.
func createNode(t *topology.Topology, i int) error {
	var routes []Route
	for j := range t.Nodes {
		if j != i {
			routes = append(routes, Route{Dst: PodCIDR(j), Via: NodeIP(j)})
		}
	}
	return CreateNodeNetns(NodeNetns(t.Nodes[i].Name), BackboneNetns, BackboneBridge, fmt.Sprintf("vn%d", i),
		netip.PrefixFrom(NodeIP(i), BackboneSubnet.Bits()), routes)
}

// CreateNodeNetns creates the node namespace name and joins it to the
// bridge of the backbone namespace with a veth: hostEnd on the bridge, eth0
// (NodeIfName) inside with addr. It adds routes, and turns on forwarding
// and off reverse-path filtering, so the node routes for its pods.
func CreateNodeNetns(name, backbone, bridge, hostEnd string, addr netip.Prefix, routes []Route) error {
	ns, err := netns.Create(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	bb, err := netns.OpenName(backbone)
	if err != nil {
		return err
	}
	defer bb.Close()
	err = netns.Do(bb, func() error {
		br, err := netlink.LinkByName(bridge)
		if err != nil {
			return fmt.Errorf("finding %s in %s: %w", bridge, backbone, err)
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
		if err := netlink.AddrAdd(eth, addrOf(addr.Addr(), addr.Bits())); err != nil {
			return fmt.Errorf("addressing node %s: %w", name, err)
		}
		if err := netlink.LinkSetUp(eth); err != nil {
			return err
		}
		for _, rt := range routes {
			r := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(rt.Dst), Gw: rt.Via.AsSlice()}
			if err := netlink.RouteAdd(r); err != nil {
				return fmt.Errorf("routing %s via %s in node %s: %w", rt.Dst, rt.Via, name, err)
			}
		}
		return errors.Join(sysctl("net/ipv4/ip_forward", "1"), sysctl("net/ipv4/conf/all/rp_filter", "0"))
	})
}
