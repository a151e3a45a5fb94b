// Package metrics holds ztunnel's Prometheus metrics: Istio's standard TCP
// metrics with Istio's label set, so Istio's Grafana dashboards and Kiali read
// them unchanged, served at /stats/prometheus.
//
//	istio_tcp_connections_opened_total
//	istio_tcp_connections_closed_total
//	istio_tcp_sent_bytes_total      bytes sent to the client (the response direction)
//	istio_tcp_received_bytes_total  bytes received from the client (the request direction)
//	ambit_ztunnel_revoked_connections_total  open connections a policy change closed
//
// Labels are those of Istio's ztunnel (CommonTrafficLabels): reporter,
// source_workload, source_canonical_service, source_canonical_revision,
// source_workload_namespace, source_principal, source_app, source_version,
// source_cluster, destination_service, destination_service_namespace,
// destination_service_name, destination_workload,
// destination_canonical_service, destination_canonical_revision,
// destination_workload_namespace, destination_principal, destination_app,
// destination_version, destination_cluster, request_protocol,
// response_flags, connection_security_policy. A value that is not known is
// "unknown", as in Istio; response_flags is "-" when there is none.
//
// Building labels (Build) is pure and tested without a registry. Metrics is
// safe for concurrent use. Byte counters are added when a connection closes.
package metrics
