// Package pstatus renders istiod's /debug/syncz answer (pkg/syncz) as
// `ambitctl proxy-status`: one row per connected proxy, columns NAME NODE
// KIND VERSION and one per resource type (WDS, WADS, CDS, LDS, RDS, EDS,
// SDS, or the type's last name) holding SYNCED, STALE, NOT SENT, or "-"
// when the proxy did not subscribe to it. Rendering is a pure function;
// fetching is the caller's.
package pstatus
