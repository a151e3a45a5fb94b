package capture

import (
	"fmt"
	"net/netip"
)

// Defaults, from DESIGN.md section 2 (Istio's in-pod values).
const (
	DefaultOutboundPort = 15001
	DefaultInboundPort  = 15006
	DefaultHBONEPort    = 15008
	DefaultMark         = 0x539
	DefaultMarkMask     = 0xfff
)

// Kubelet probe source addresses after SNAT on the node.
var (
	DefaultProbeSourceV4 = netip.MustParseAddr("169.254.7.127")
	DefaultProbeSourceV6 = netip.MustParseAddr("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")
)

// Config parameterises the capture rules. A zero field takes its default.
type Config struct {
	// OutboundPort receives redirected outbound connections (ztunnel's
	// outbound capture listener).
	OutboundPort uint16
	// InboundPort receives redirected inbound plaintext connections.
	InboundPort uint16
	// HBONEPort is ztunnel's inbound HBONE listener; connections to it are
	// not redirected.
	HBONEPort uint16
	// Mark is the SO_MARK of ztunnel's own sockets, compared under MarkMask.
	Mark     uint32
	MarkMask uint32
	// ProbeSourceV4 and ProbeSourceV6 are the addresses kubelet probes are
	// SNATed to; connections from them are let through.
	ProbeSourceV4 netip.Addr
	ProbeSourceV6 netip.Addr
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.OutboundPort == 0 {
		c.OutboundPort = DefaultOutboundPort
	}
	if c.InboundPort == 0 {
		c.InboundPort = DefaultInboundPort
	}
	if c.HBONEPort == 0 {
		c.HBONEPort = DefaultHBONEPort
	}
	if c.Mark == 0 {
		c.Mark = DefaultMark
	}
	if c.MarkMask == 0 {
		c.MarkMask = DefaultMarkMask
	}
	if !c.ProbeSourceV4.IsValid() {
		c.ProbeSourceV4 = DefaultProbeSourceV4
	}
	if !c.ProbeSourceV6.IsValid() {
		c.ProbeSourceV6 = DefaultProbeSourceV6
	}
	return c
}

// Validate reports a configuration the rules cannot express. It applies
// defaults first.
func (c Config) Validate() error {
	c = c.WithDefaults()
	if c.OutboundPort == c.InboundPort || c.OutboundPort == c.HBONEPort || c.InboundPort == c.HBONEPort {
		return fmt.Errorf("capture config: ports must differ (outbound %d, inbound %d, HBONE %d)", c.OutboundPort, c.InboundPort, c.HBONEPort)
	}
	if c.Mark&^c.MarkMask != 0 {
		return fmt.Errorf("capture config: mark %#x has bits outside mask %#x", c.Mark, c.MarkMask)
	}
	if !c.ProbeSourceV4.Is4() {
		return fmt.Errorf("capture config: probe source %s is not an IPv4 address", c.ProbeSourceV4)
	}
	if !c.ProbeSourceV6.Is6() || c.ProbeSourceV6.Is4In6() {
		return fmt.Errorf("capture config: probe source %s is not an IPv6 address", c.ProbeSourceV6)
	}
	return nil
}
