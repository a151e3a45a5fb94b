package hbone

import (
	"fmt"
	"math"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/time/rate"
)

// Default per-connection rate limits of a Server (see "Abuse bounds" in the
// package documentation for why these values).
const (
	// DefaultStreamOpenRate is the sustained rate, per second, at which a
	// peer may open streams on one connection.
	DefaultStreamOpenRate = 2000
	// DefaultStreamOpenBurst is the stream openings a peer may make at once.
	DefaultStreamOpenBurst = 2 * DefaultStreamOpenRate
	// DefaultResetRate is the sustained rate, per second, of premature
	// stream resets (before the CONNECT was answered) a peer may make on one
	// connection; a reset after the answer counts a quarter.
	DefaultResetRate = 200
	// DefaultResetBurst is the premature resets a peer may make at once.
	DefaultResetBurst = 2 * DefaultResetRate
)

// Reasons a Server passes to ServerConfig.OnLimit, one call per event.
const (
	// LimitRefusedStream: a HEADERS frame came while MaxConcurrentStreams
	// handlers were in flight on the connection; the stream was refused
	// with RST_STREAM(REFUSED_STREAM) and nothing was started.
	LimitRefusedStream = "refused_stream"
	// LimitStreamRate: the peer opened streams faster than StreamOpenRate
	// allows; the connection was closed with GOAWAY(ENHANCE_YOUR_CALM).
	LimitStreamRate = "stream_rate"
	// LimitResetRate: the peer reset streams (or made the server reset them
	// with stream errors) faster than ResetRate allows; GOAWAY as above.
	LimitResetRate = "reset_rate"
	// LimitSettingsRate: the peer sent SETTINGS frames faster than
	// settingsRate allows; GOAWAY as above.
	LimitSettingsRate = "settings_rate"
	// LimitControlQueue: the peer made the server queue more than
	// maxQueuedControl control frames (PING or SETTINGS acks, RST_STREAM)
	// without reading them; GOAWAY as above.
	LimitControlQueue = "control_queue"
)

// Reset costs, in quarter tokens of the reset bucket: a premature reset (or
// a stream error the peer caused) costs one token, a reset after the
// CONNECT was answered a quarter of one.
const (
	resetUnits         = 4
	prematureResetCost = resetUnits
	answeredResetCost  = 1
)

// SETTINGS frames are rare in a legitimate connection (one at start, maybe
// an update), and each SETTINGS_INITIAL_WINDOW_SIZE walks every stream, so
// a fixed bound is enough.
const (
	settingsRate  = 10
	settingsBurst = 100
)

// connLimits are a server connection's abuse bounds. A nil limiter means
// unlimited. Limiters are used by the read loop only.
type connLimits struct {
	open, reset, settings *rate.Limiter
	openRate, resetRate   float64
	onLimit               func(reason string)
}

func newConnLimits(cfg *ServerConfig) *connLimits {
	return &connLimits{
		open:      newLimiter(cfg.StreamOpenRate, cfg.StreamOpenBurst, 1),
		reset:     newLimiter(cfg.ResetRate, cfg.ResetBurst, resetUnits),
		settings:  newLimiter(settingsRate, settingsBurst, 1),
		openRate:  cfg.StreamOpenRate,
		resetRate: cfg.ResetRate,
		onLimit:   cfg.OnLimit,
	}
}

// newLimiter is a token bucket of r per second and burst, both scaled by
// units; nil when r is negative (unlimited).
func newLimiter(r float64, burst, units int) *rate.Limiter {
	if r < 0 || math.IsInf(r, 1) {
		return nil
	}
	return rate.NewLimiter(rate.Limit(r*float64(units)), burst*units)
}

func allowN(l *rate.Limiter, n int) bool { return l == nil || l.AllowN(time.Now(), n) }

// limitError is the connection error for an exceeded rate limit.
func limitError(reason, format string, args ...any) connError {
	return connError{code: http2.ErrCodeEnhanceYourCalm, reason: fmt.Sprintf(format, args...), limit: reason}
}

// report calls the OnLimit hook, if any.
func (l *connLimits) report(reason string) {
	if l != nil && l.onLimit != nil {
		l.onLimit(reason)
	}
}

// allowOpen charges one stream opening.
func (l *connLimits) allowOpen() error {
	if l == nil || allowN(l.open, 1) {
		return nil
	}
	return limitError(LimitStreamRate, "stream openings faster than %v/s", l.openRate)
}

// allowReset charges one reset of a peer-opened stream: premature when the
// CONNECT was not answered yet or the peer caused the reset with an error.
func (l *connLimits) allowReset(premature bool) error {
	cost := answeredResetCost
	if premature {
		cost = prematureResetCost
	}
	if l == nil || allowN(l.reset, cost) {
		return nil
	}
	return limitError(LimitResetRate, "stream resets faster than %v/s", l.resetRate)
}

// allowSettings charges one SETTINGS frame.
func (l *connLimits) allowSettings() error {
	if l == nil || allowN(l.settings, 1) {
		return nil
	}
	return limitError(LimitSettingsRate, "SETTINGS frames faster than %d/s", settingsRate)
}
