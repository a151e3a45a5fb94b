package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
)

// Handler is what the cni-agent implements to serve the plugin. Every method
// may be called concurrently.
type Handler interface {
	// Enroll returns once the pod is captured and ztunnel is ready for it,
	// or with Enrolled=false for a pod outside the mesh. An error fails the
	// pod's CNI ADD: its message reaches the kubelet's event for the pod.
	Enroll(ctx context.Context, req EnrollRequest) (EnrollResponse, error)
	// Release undoes Enroll; it must succeed for unknown pods.
	Release(ctx context.Context, req ReleaseRequest) error
	// Check reports whether an enrolled pod's capture is still in place.
	Check(ctx context.Context, req CheckRequest) (CheckResponse, error)
	// Status returns nil when the agent can enroll pods.
	Status(ctx context.Context) error
}

// maxBody bounds request bodies; real ones are a few hundred bytes.
const maxBody = 1 << 20

// Paths of the endpoints.
const (
	PathEnroll  = "/v1/enroll"
	PathRelease = "/v1/release"
	PathCheck   = "/v1/check"
	PathStatus  = "/v1/status"
)

// NewServer returns the HTTP handler that serves h on the agent's socket.
func NewServer(h Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathEnroll, func(w http.ResponseWriter, r *http.Request) {
		var req EnrollRequest
		if !decode(w, r, &req) {
			return
		}
		resp, err := h.Enroll(r.Context(), req)
		reply(w, resp, err, http.StatusOK)
	})
	mux.HandleFunc("POST "+PathRelease, func(w http.ResponseWriter, r *http.Request) {
		var req ReleaseRequest
		if !decode(w, r, &req) {
			return
		}
		reply(w, nil, h.Release(r.Context(), req), http.StatusNoContent)
	})
	mux.HandleFunc("POST "+PathCheck, func(w http.ResponseWriter, r *http.Request) {
		var req CheckRequest
		if !decode(w, r, &req) {
			return
		}
		resp, err := h.Check(r.Context(), req)
		reply(w, resp, err, http.StatusOK)
	})
	mux.HandleFunc("GET "+PathStatus, func(w http.ResponseWriter, r *http.Request) {
		if err := h.Status(r.Context()); err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("decoding request: %v", err))
		return false
	}
	return true
}

func reply(w http.ResponseWriter, body any, err error, okStatus int) {
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if okStatus == http.StatusNoContent {
		w.WriteHeader(okStatus)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(okStatus)
	_ = json.NewEncoder(w).Encode(body)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(ErrorResponse{Error: msg})
}

// Listen creates the agent's unix socket at path: it creates the parent
// directory (0755), removes a stale socket left by a previous agent, and
// restricts the socket to its owner (0600), as only root-run plugins dial it.
// The caller owns the listener; closing it removes the socket file.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating directory for agent socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale agent socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on agent socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restricting agent socket %s to its owner: %w", path, err)
	}
	return l, nil
}
