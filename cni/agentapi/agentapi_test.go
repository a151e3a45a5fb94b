package agentapi_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/cni/agentapi"
)

type handler struct {
	got     agentapi.EnrollRequest
	release error
	ready   error
	block   chan struct{}
}

func (h *handler) Enroll(ctx context.Context, req agentapi.EnrollRequest) (agentapi.EnrollResponse, error) {
	h.got = req
	if h.block != nil {
		select {
		case <-h.block:
		case <-ctx.Done():
			return agentapi.EnrollResponse{}, ctx.Err()
		}
	}
	return agentapi.EnrollResponse{Enrolled: true}, nil
}
func (h *handler) Release(context.Context, agentapi.ReleaseRequest) error { return h.release }
func (h *handler) Check(context.Context, agentapi.CheckRequest) (agentapi.CheckResponse, error) {
	return agentapi.CheckResponse{Enrolled: true, CaptureInPlace: true}, nil
}
func (h *handler) Status(context.Context) error { return h.ready }

func serve(t *testing.T, h agentapi.Handler) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ambit-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sub", "a.sock")
	// A stale socket file from a previous agent is replaced.
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := agentapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v %v", fi, err)
	}
	srv := &http.Server{Handler: agentapi.NewServer(h)}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return sock
}

func TestRoundTrip(t *testing.T) {
	h := &handler{}
	c := agentapi.NewClient(serve(t, h))
	defer c.CloseIdleConnections()
	ctx := context.Background()
	req := agentapi.EnrollRequest{
		PodRef: agentapi.PodRef{Namespace: "ns", Name: "p", UID: "u", ContainerID: "c", Netns: "/n", IfName: "eth0"},
		IPs:    []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")},
	}
	resp, err := c.Enroll(ctx, req)
	if err != nil || !resp.Enrolled {
		t.Fatalf("Enroll = %+v, %v", resp, err)
	}
	if h.got.PodRef != req.PodRef || len(h.got.IPs) != 2 || h.got.IPs[1] != req.IPs[1] {
		t.Errorf("server got %+v", h.got)
	}
	if cr, err := c.Check(ctx, agentapi.CheckRequest{PodRef: req.PodRef}); err != nil || !cr.CaptureInPlace {
		t.Errorf("Check = %+v, %v", cr, err)
	}
	if err := c.Release(ctx, agentapi.ReleaseRequest{PodRef: req.PodRef}); err != nil {
		t.Errorf("Release: %v", err)
	}
	if err := c.Status(ctx); err != nil {
		t.Errorf("Status: %v", err)
	}

	h.release = errors.New("netns busy")
	var re *agentapi.RemoteError
	if err := c.Release(ctx, agentapi.ReleaseRequest{}); !errors.As(err, &re) || re.Message != "netns busy" || re.Op != "release" {
		t.Errorf("Release error = %v", err)
	}
	h.ready = errors.New("ztunnel not connected")
	if err := c.Status(ctx); !errors.As(err, &re) || re.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("Status error = %v", err)
	}
}

func TestUnreachableAndTimeout(t *testing.T) {
	c := agentapi.NewClient(filepath.Join(t.TempDir(), "none.sock"))
	_, err := c.Enroll(context.Background(), agentapi.EnrollRequest{})
	var ue *agentapi.UnreachableError
	if !errors.Is(err, agentapi.ErrUnreachable) || !errors.As(err, &ue) || ue.Op != "enroll" {
		t.Errorf("err = %v, want unreachable", err)
	}

	h := &handler{block: make(chan struct{})}
	defer close(h.block)
	c = agentapi.NewClient(serve(t, h))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = c.Enroll(ctx, agentapi.EnrollRequest{})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, agentapi.ErrUnreachable) {
		t.Errorf("err = %v, want deadline exceeded", err)
	}
}

func TestBadRequest(t *testing.T) {
	sock := serve(t, &handler{})
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Post("http://agent"+agentapi.PathEnroll, "application/json", strings.NewReader("{"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("status %d", resp.StatusCode)
	}
}
