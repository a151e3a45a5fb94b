// Package agentapi is the protocol between the ambit-cni plugin (client) and
// the node's cni-agent (server): JSON over HTTP/1.1 on a unix socket,
// DefaultSocketPath unless the plugin config says otherwise.
//
// Endpoints (all bodies JSON):
//
//	POST /v1/enroll   EnrollRequest  -> 200 EnrollResponse
//	POST /v1/release  ReleaseRequest -> 204
//	POST /v1/check    CheckRequest   -> 200 CheckResponse
//	GET  /v1/status                  -> 204 when ready
//
// Any failure the handler reports comes back as a non-2xx status with an
// ErrorResponse body; the Client turns it into a *RemoteError carrying the
// agent's message. Transport failures (no socket, connection refused or reset)
// wrap ErrUnreachable; a deadline from the caller's context wraps
// context.DeadlineExceeded. Callers tell the three apart with errors.Is/As.
//
// Contract of Enroll: the agent answers only once the pod's capture rules are
// in place and ztunnel has acknowledged the pod, or with Enrolled=false when
// the pod is not part of the mesh. Release is idempotent: releasing an unknown
// pod succeeds. The server runs each request on its own goroutine; a Handler
// must be safe for concurrent use and must honour ctx cancellation (the
// client's connection closing cancels it).
package agentapi
