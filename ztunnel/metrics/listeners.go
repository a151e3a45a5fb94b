package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// ForeignListeners is the gauge ambit_ztunnel_foreign_listeners{pod,
// namespace,port}: listening sockets on one of ztunnel's in-pod ports in a
// served pod's network namespace that are not ztunnel's (an app squatting
// the port with SO_REUSEPORT). A series exists only while its value is not
// zero. Safe for concurrent use.
type ForeignListeners struct {
	g *prometheus.GaugeVec
}

// NewForeignListeners creates the gauge and registers it in reg.
func NewForeignListeners(reg prometheus.Registerer) *ForeignListeners {
	f := &ForeignListeners{g: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ambit_ztunnel_foreign_listeners",
		Help: "Listening sockets on a ztunnel in-pod port (15001, 15006, 15008) of a served pod that are not ztunnel's.",
	}, []string{"pod", "namespace", "port"})}
	reg.MustRegister(f.g)
	return f
}

// Set records n foreign listeners on port in the pod; n == 0 removes the
// series. It fits inpod.Config.OnForeignListener.
func (f *ForeignListeners) Set(pod, namespace string, port, n int) {
	l := prometheus.Labels{"pod": pod, "namespace": namespace, "port": strconv.Itoa(port)}
	if n == 0 {
		f.g.Delete(l)
		return
	}
	f.g.With(l).Set(float64(n))
}
