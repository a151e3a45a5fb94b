// Package capture installs, verifies and removes Ambit's ambient traffic
// capture rules inside a pod's network namespace.
//
// The rules (DESIGN.md section 2), for TCP over IPv4 and IPv6:
//   - outbound: connections not from ztunnel's sockets (SO_MARK Config.Mark
//     under Config.MarkMask), not leaving through lo (which covers 127.0.0.1
//     and the pod's own addresses) and not to the kubelet probe address are
//     REDIRECTed to Config.OutboundPort; ztunnel reads the original
//     destination with pkg/sockopt.OriginalDst;
//   - inbound: connections not arriving on lo, not from the kubelet probe
//     source (Config.ProbeSourceV4/V6) and not to Config.HBONEPort are
//     REDIRECTed to Config.InboundPort.
//
// REDIRECT is NAT: only a connection's first packet traverses the rules;
// replies and later packets follow the connection-tracking entry.
//
// Rules is the backend-independent rule list (pure). Two Backends render it:
// NFTables (default; one table "inet ambit", removed exactly by deleting it)
// and IPTables (chains AMBIT_OUTPUT and AMBIT_PREROUTING in the nat tables of
// iptables and ip6tables, jumped to from OUTPUT and PREROUTING). Every
// Backend method takes the pod's namespace as an open file (see pkg/netns)
// and is idempotent: Install replaces whatever of ours is there atomically
// per family, Remove on a clean namespace succeeds.
package capture
