//go:build linux

package zds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"time"

	"istio.io/istio/pkg/zdsapi"
)

// WorkloadAdd is a pod handed to ztunnel.
type WorkloadAdd struct {
	UID            string
	Name           string
	Namespace      string
	ServiceAccount string
	// Netns is the pod's network namespace. The Handler owns it and must
	// close it, also when returning an error.
	Netns *os.File
}

// Handler is what ztunnel does with ZDS requests. The Client calls it from
// one goroutine, in message order; the returned error's text is sent to the
// agent in the ack.
type Handler interface {
	// AddPod starts (or refreshes) the proxy for a pod. During a snapshot
	// and after it.
	AddPod(ctx context.Context, w WorkloadAdd) error
	// KeepPod asks to keep the pod with this uid if ztunnel has it (the agent
	// has no netns for it). Snapshot only.
	KeepPod(ctx context.Context, uid string) error
	// DelPod stops the pod's proxy.
	DelPod(ctx context.Context, uid string) error
	// SnapshotDone ends a snapshot: uids lists every pod added or kept since
	// this connection started; the handler drops every pod not in it.
	SnapshotDone(ctx context.Context, uids []string) error
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// Path of the agent's socket; DefaultSocketPath if empty.
	Path string
	// Handler is required.
	Handler Handler
	// MinBackoff and MaxBackoff bound the reconnect delay (defaults 100ms
	// and 5s); it doubles after each failed attempt, with jitter.
	MinBackoff, MaxBackoff time.Duration
	// WriteTimeout bounds sending the hello and each ack (default 5s).
	WriteTimeout time.Duration
	// Logger; discards if nil.
	Logger *slog.Logger
}

// Client is the ztunnel side of ZDS.
type Client struct {
	cfg ClientConfig
	log *slog.Logger
}

// NewClient validates cfg and fills defaults.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Handler == nil {
		return nil, errors.New("zds client: no handler configured")
	}
	if cfg.Path == "" {
		cfg.Path = DefaultSocketPath
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(5*time.Second, cfg.MinBackoff)
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, log: log}, nil
}

// Run connects to the agent and serves requests, reconnecting with backoff
// whenever the connection fails, until ctx is done; it then returns nil.
func (c *Client) Run(ctx context.Context) error {
	delay := c.cfg.MinBackoff
	for {
		established, err := c.runConn(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if established {
			delay = c.cfg.MinBackoff
		}
		c.log.Warn("zds connection to agent ended; reconnecting", "error", err, "backoff", delay)
		// Jitter in [delay/2, delay).
		wait := delay/2 + rand.N(delay/2+1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(2*delay, c.cfg.MaxBackoff)
	}
}

// runConn serves one connection. established reports whether the hello was
// sent.
func (c *Client) runConn(ctx context.Context) (established bool, err error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", c.cfg.Path)
	if err != nil {
		return false, fmt.Errorf("connecting to zds socket %s: %w", c.cfg.Path, err)
	}
	conn := nc.(*net.UnixConn)
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	hello, err := encodeHello(zdsapi.Version_V1)
	if err != nil {
		return false, err
	}
	if err := c.write(conn, hello); err != nil {
		return false, fmt.Errorf("sending hello: %w", err)
	}
	c.log.Info("connected to zds agent", "path", c.cfg.Path)

	st := connState{inSnapshot: true, seen: map[string]bool{}}
	for {
		p, err := recvPacket(conn)
		if err != nil {
			return true, fmt.Errorf("reading from agent: %w", err)
		}
		var ackMsg string
		if p.err != nil {
			closeFDs(p.fds)
			ackMsg = p.err.Error()
		} else if req, derr := DecodeRequest(p.data, p.fds); derr != nil {
			ackMsg = derr.Error()
		} else {
			ackMsg = c.dispatch(ctx, &st, req)
		}
		if ackMsg != "" {
			c.log.Warn("zds request failed", "error", ackMsg)
		}
		ack, err := encodeAck(limitAckText(ackMsg))
		if err != nil {
			return true, err
		}
		if err := c.write(conn, ack); err != nil {
			return true, fmt.Errorf("sending ack: %w", err)
		}
	}
}

func (c *Client) write(conn *net.UnixConn, data []byte) error {
	if err := conn.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout)); err != nil {
		return err
	}
	return sendPacket(conn, data, -1)
}

// maxAckText bounds an ack's error text: Istio's agent reads acks into a
// 1 KiB buffer and treats a truncated packet as a failure.
const maxAckText = 512

// limitAckText shortens s to maxAckText bytes of valid UTF-8.
func limitAckText(s string) string {
	if len(s) <= maxAckText {
		return s
	}
	return strings.ToValidUTF8(s[:maxAckText-3], "") + "..."
}

type connState struct {
	inSnapshot bool
	seen       map[string]bool
	uids       []string
}

func (s *connState) record(uid string) {
	if !s.seen[uid] {
		s.seen[uid] = true
		s.uids = append(s.uids, uid)
	}
}

// dispatch hands req to the handler and returns the ack's error text.
func (c *Client) dispatch(ctx context.Context, st *connState, req Request) string {
	h := c.cfg.Handler
	var err error
	switch req.Kind {
	case KindAdd:
		if st.inSnapshot {
			st.record(req.UID)
		}
		err = h.AddPod(ctx, WorkloadAdd{
			UID: req.UID, Name: req.Name, Namespace: req.Namespace,
			ServiceAccount: req.ServiceAccount, Netns: req.Netns,
		})
	case KindKeep:
		if !st.inSnapshot {
			return fmt.Sprintf("protocol error: keep for uid %s after snapshot_sent", req.UID)
		}
		st.record(req.UID)
		err = h.KeepPod(ctx, req.UID)
	case KindDel:
		if st.inSnapshot {
			delete(st.seen, req.UID)
			for i, u := range st.uids {
				if u == req.UID {
					st.uids = append(st.uids[:i], st.uids[i+1:]...)
					break
				}
			}
		}
		err = h.DelPod(ctx, req.UID)
	case KindSnapshotSent:
		if !st.inSnapshot {
			return "protocol error: second snapshot_sent on one connection"
		}
		st.inSnapshot = false
		uids := st.uids
		st.uids, st.seen = nil, nil
		err = h.SnapshotDone(ctx, uids)
	default:
		return fmt.Sprintf("unsupported request kind %v", req.Kind)
	}
	if err != nil {
		if msg := err.Error(); msg != "" {
			return msg
		}
		return "handler failed"
	}
	return ""
}
