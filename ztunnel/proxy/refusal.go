package proxy

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/ambit-mesh/ambit/ztunnel/limit"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

// Reasons a connection is refused before it is served, as counted in
// metrics.Refused.
const (
	reasonSelfCall = "self_call" // to one of ztunnel's own listeners
	reasonLoop     = "loop"      // ztunnel dialed it itself
)

// reasonOf names a limiter refusal: "limit_rate", "limit_in_progress",
// "limit_open" for the pod's or source's own limits, "node_limit_open" (and
// so on) for the node's.
func reasonOf(err error) string {
	var le *limit.LimitError
	if errors.As(err, &le) {
		if le.Scope != "" {
			return le.Scope + "_limit_" + le.Kind
		}
		return "limit_" + le.Kind
	}
	return "error"
}

// refusalLog counts every refusal and logs at most one line per direction
// and reason every logEvery, with how many were refused since: a flood of
// refusals must not become a flood of log lines.
type refusalLog struct {
	log     *slog.Logger
	metrics *metrics.Metrics
	pod     Pod

	mu    sync.Mutex
	every map[string]*refusalSlot
}

type refusalSlot struct {
	sometimes rate.Sometimes
	n         int
}

const logEvery = 10 * time.Second

func (r *refusalLog) refuse(direction, reason string, err error) {
	if r.metrics != nil {
		r.metrics.Refused(r.pod.Namespace, r.pod.Name, direction, reason)
	}
	key := direction + "/" + reason
	r.mu.Lock()
	if r.every == nil {
		r.every = map[string]*refusalSlot{}
	}
	sl := r.every[key]
	if sl == nil {
		sl = &refusalSlot{sometimes: rate.Sometimes{First: 1, Interval: logEvery}}
		r.every[key] = sl
	}
	sl.n++
	var logged int
	sl.sometimes.Do(func() { logged, sl.n = sl.n, 0 })
	r.mu.Unlock()
	if logged > 0 {
		r.log.Warn("connection refused", "direction", direction, "reason", reason, "error", err,
			"refused_since_last_line", logged)
	}
}
