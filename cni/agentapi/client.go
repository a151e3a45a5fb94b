package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
)

// Client talks to the agent on its unix socket. It is safe for concurrent
// use. Deadlines come from each call's ctx.
type Client struct {
	socket string
	http   *http.Client
}

var _ Handler = (*Client)(nil)

// NewClient returns a client for the agent listening at socketPath.
func NewClient(socketPath string) *Client {
	var d net.Dialer
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socketPath)
		},
		DisableCompression: true,
		MaxIdleConns:       1,
	}
	return &Client{socket: socketPath, http: &http.Client{Transport: tr}}
}

// Socket is the path the client dials.
func (c *Client) Socket() string { return c.socket }

// Enroll asks the agent to enroll a pod and waits for its verdict.
func (c *Client) Enroll(ctx context.Context, req EnrollRequest) (EnrollResponse, error) {
	var resp EnrollResponse
	err := c.do(ctx, "enroll", http.MethodPost, PathEnroll, req, &resp)
	return resp, err
}

// Release tells the agent a pod is going away.
func (c *Client) Release(ctx context.Context, req ReleaseRequest) error {
	return c.do(ctx, "release", http.MethodPost, PathRelease, req, nil)
}

// Check asks whether a pod's capture is still in place.
func (c *Client) Check(ctx context.Context, req CheckRequest) (CheckResponse, error) {
	var resp CheckResponse
	err := c.do(ctx, "check", http.MethodPost, PathCheck, req, &resp)
	return resp, err
}

// Status returns nil when the agent answers that it is ready.
func (c *Client) Status(ctx context.Context) error {
	return c.do(ctx, "status", http.MethodGet, PathStatus, nil, nil)
}

// CloseIdleConnections releases the client's idle connection.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

func (c *Client) do(ctx context.Context, op, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding %s request: %w", op, err)
		}
		body = bytes.NewReader(b)
	}
	// The host part is ignored by the unix dialer; "agent" keeps logs readable.
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return fmt.Errorf("building %s request: %w", op, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("node agent %s at %s: no answer in time: %w", op, c.socket, ctxErr)
		}
		return &UnreachableError{Op: op, Socket: c.socket, Err: unwrapURLError(err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("node agent %s at %s: no answer in time: %w", op, c.socket, ctxErr)
		}
		return &UnreachableError{Op: op, Socket: c.socket, Err: fmt.Errorf("reading answer: %w", err)}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e ErrorResponse
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(data))
		}
		return &RemoteError{Op: op, StatusCode: resp.StatusCode, Message: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding node agent %s answer: %w", op, err)
	}
	return nil
}

// unwrapURLError drops net/http's `Get "http://agent/...":` prefix, which
// names a URL that does not exist on the wire.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
