package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Path is where Handler is served.
const Path = "/stats/prometheus"

// Metrics are ztunnel's counters in their own registry.
type Metrics struct {
	reg      *prometheus.Registry
	opened   *prometheus.CounterVec
	closed   *prometheus.CounterVec
	sent     *prometheus.CounterVec
	received *prometheus.CounterVec
	refused  *prometheus.CounterVec
	revoked  *prometheus.CounterVec
}

// New returns Metrics registered in a new registry, with the Go runtime and
// process collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_opened_total",
			Help: "The total number of TCP connections opened.",
		}, LabelNames),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_closed_total",
			Help: "The total number of TCP connections closed.",
		}, LabelNames),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_sent_bytes_total",
			Help: "The size of total bytes sent during response in case of a TCP connection.",
		}, LabelNames),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_received_bytes_total",
			Help: "The size of total bytes received during request in case of a TCP connection.",
		}, LabelNames),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_ztunnel_refused_connections_total",
			Help: "Connections refused before they were served: reason self_call (to one of ztunnel's own listeners), loop (dialed by ztunnel itself), limit_rate, limit_in_progress or limit_open (the pod's or source's connection limits), node_limit_open (the node's), hbone_refused_stream, hbone_stream_rate, hbone_reset_rate, hbone_settings_rate, hbone_control_queue (an HBONE peer past a per-connection bound; the rates end the connection with GOAWAY ENHANCE_YOUR_CALM).",
		}, []string{"namespace", "pod", "direction", "reason"}),
		revoked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_ztunnel_revoked_connections_total",
			Help: "Open connections closed because a policy change no longer allows them (counted in istio_tcp_connections_opened_total when they were allowed).",
		}, LabelNames),
	}
	m.reg.MustRegister(m.opened, m.closed, m.sent, m.received, m.refused, m.revoked,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Opened counts a connection opened.
func (m *Metrics) Opened(l Labels) {
	m.opened.WithLabelValues(l.Values()...).Inc()
}

// Closed counts a connection closed with the bytes it carried: sent to the
// client (response) and received from it (request).
func (m *Metrics) Closed(l Labels, sent, received int64) {
	v := l.Values()
	m.closed.WithLabelValues(v...).Inc()
	if sent > 0 {
		m.sent.WithLabelValues(v...).Add(float64(sent))
	} else {
		m.sent.WithLabelValues(v...)
	}
	if received > 0 {
		m.received.WithLabelValues(v...).Add(float64(received))
	} else {
		m.received.WithLabelValues(v...)
	}
}

// Refused counts a connection refused before it was served (see the
// metric's help for the reasons).
func (m *Metrics) Refused(namespace, pod, direction, reason string) {
	m.refused.WithLabelValues(namespace, pod, direction, reason).Inc()
}

// Revoked counts an open connection closed because a policy change no
// longer allows it; l are the labels it was opened with.
func (m *Metrics) Revoked(l Labels) {
	m.revoked.WithLabelValues(l.Values()...).Inc()
}

// RefusedCounter is the counter behind Refused (for tests).
func (m *Metrics) RefusedCounter() *prometheus.CounterVec { return m.refused }

// Registry returns the registry (for tests and extra collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
