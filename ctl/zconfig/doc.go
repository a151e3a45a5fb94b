// Package zconfig renders a ztunnel's /config_dump (ztunnel/admin's
// ConfigDump document) as istioctl's `ztunnel-config` tables, or as JSON
// or YAML, for `ambitctl ztunnel-config`.
//
// Parse converts the document once into typed values (the workload API
// protos, read with ztunnel/state's local config parser, which is the
// dump's format); Write is a pure function of that value, the kind, the
// format and the clock (certificate validity), so tables are tested with
// golden files made from a real dump. Fetching the dump is the caller's:
// Source is the seam, implemented by a port-forward to a ztunnel pod
// (ctl/kube) and by the local mesh's node network namespace (ctl/local).
//
// Columns follow istioctl:
//
//	workloads:    NAMESPACE, POD NAME, ADDRESS, NODE, WAYPOINT, PROTOCOL
//	services:     NAMESPACE, SERVICE NAME, SERVICE VIP, WAYPOINT, ENDPOINTS (healthy/all)
//	policies:     NAMESPACE, POLICY NAME, ACTION, SCOPE
//	certificates: CERTIFICATE NAME, TYPE, STATUS, VALID CERT, SERIAL NUMBER, NOT AFTER, NOT BEFORE
//	connections:  NAMESPACE, POD NAME, IDENTITY, OPEN CONNECTIONS
//
// Connections differ from istioctl's per-connection rows (WORKLOAD,
// DIRECTION, LOCAL, REMOTE, ...): Ambit's ztunnel exports only the count of
// open connections per captured pod. Certificates list each identity's
// leaf only (TYPE Leaf): the dump carries no chain or root.
package zconfig
