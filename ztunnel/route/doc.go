// Package route makes ztunnel's per-connection routing decisions. It is
// pure: no sockets, no goroutines, no clock; it reads the mesh through the
// narrow View (satisfied by *state.View) and the only randomness is the
// injectable Picker.
//
// Outbound: for a connection captured from src to dst:
//   - dst is a service address (VIP, or inside a service CIDR) on src's
//     network: the service's waypoint, if any, wins (Kind Waypoint; routing
//     through it is not implemented yet, callers fail the connection).
//     Otherwise the port must be one of the service's ports, and one
//     endpoint is picked among the service's workloads that are HEALTHY
//     (any status with health_policy ALLOW_ALL), on src's network, have an
//     IP, and expose that port; the target port is the endpoint's own
//     mapping, else the service's target_port, else the service port. With
//     load_balancing mode PASSTHROUGH the original address is used as is.
//   - dst is a workload address: that workload (its waypoint wins, if any).
//   - otherwise (outside the mesh): Passthrough to dst.
//
// A chosen workload with tunnel_protocol HBONE gives Kind HBONE: connect to
// <workload IP>:15008, :authority <workload IP>:<target port>, verify the
// peer as DestIdentity. Any other protocol gives Passthrough to
// <workload IP>:<target port>. Traffic from a waypoint itself is never sent
// back to that waypoint.
//
// Inbound: finds the destination workload by address, refuses it when it
// is unknown or runs on another node, and evaluates its L4 policies
// (ztunnel/policy) for the peer.
package route
