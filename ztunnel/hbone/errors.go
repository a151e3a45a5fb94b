package hbone

import (
	"errors"
	"fmt"

	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"golang.org/x/net/http2"
)

// Sentinel errors. Returned errors wrap them; test with errors.Is.
var (
	// ErrNotServed: the destination is not a workload this node serves
	// (an Authorize result; answered with 404).
	ErrNotServed = errors.New("destination not served by this node")
	// ErrDenied: policy denies the connection (an Authorize result; answered with 403).
	ErrDenied = errors.New("connection denied by policy")
	// ErrBadRequest: the CONNECT request is malformed (answered with 400).
	ErrBadRequest = errors.New("malformed CONNECT request")

	// ErrPeerIdentity: the peer's verified SPIFFE ID is not the expected one.
	ErrPeerIdentity = errors.New("unexpected peer identity")
	// ErrTrustDomain: the peer's identity is outside the local trust domain.
	ErrTrustDomain = errors.New("peer identity outside the local trust domain")
	// ErrNoPeerCertificate: the peer presented no certificate.
	ErrNoPeerCertificate = errors.New("peer presented no certificate")
	// ErrALPN: the peer did not negotiate ALPN "h2".
	ErrALPN = errors.New(`peer did not negotiate ALPN "h2"`)

	// ErrRejected: the server answered the CONNECT with a non-2xx status.
	ErrRejected = errors.New("CONNECT rejected")
	// ErrStreamReset: the peer reset the stream (RST_STREAM).
	ErrStreamReset = errors.New("stream reset by peer")
	// ErrStreamClosed: the stream was closed locally.
	ErrStreamClosed = errors.New("stream closed")
	// ErrWriteAfterCloseWrite: Write after CloseWrite.
	ErrWriteAfterCloseWrite = errors.New("write after CloseWrite")
	// ErrConnClosed: the HTTP/2 connection under the stream is gone.
	ErrConnClosed = errors.New("hbone connection closed")
	// ErrGoAway: the peer sent GOAWAY and will not process this stream.
	ErrGoAway = errors.New("hbone connection going away")
	// ErrPingTimeout: the peer did not answer a keep-alive PING in time.
	ErrPingTimeout = errors.New("keep-alive PING not answered")
	// ErrPoolClosed: Dial on a closed Pool.
	ErrPoolClosed = errors.New("hbone pool closed")
	// ErrServerClosed: Serve after Close or Shutdown.
	ErrServerClosed = errors.New("hbone server closed")
)

// PeerIdentityError reports a peer whose verified identity is not the one
// expected. It matches ErrPeerIdentity with errors.Is.
type PeerIdentityError struct {
	Got, Want spiffe.ID
}

func (e *PeerIdentityError) Error() string {
	return fmt.Sprintf("peer identity %s, expected %s", e.Got, e.Want)
}

// Is makes errors.Is(err, ErrPeerIdentity) true.
func (e *PeerIdentityError) Is(target error) bool { return target == ErrPeerIdentity }

// RejectedError is a CONNECT answered with a non-2xx status. It matches
// ErrRejected with errors.Is.
type RejectedError struct {
	Status int    // HTTP status, e.g. 403
	Reason string // response body (trimmed), may be empty
}

func (e *RejectedError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("CONNECT rejected with status %d", e.Status)
	}
	return fmt.Sprintf("CONNECT rejected with status %d: %s", e.Status, e.Reason)
}

// Is makes errors.Is(err, ErrRejected) true.
func (e *RejectedError) Is(target error) bool { return target == ErrRejected }

// resetError is a stream reset by the peer with an HTTP/2 error code.
type resetError struct{ code http2.ErrCode }

func (e resetError) Error() string        { return fmt.Sprintf("%v (%v)", ErrStreamReset, e.code) }
func (e resetError) Is(target error) bool { return target == ErrStreamReset }

// goAwayError is a connection-level failure the peer announced with GOAWAY.
type goAwayError struct {
	code  http2.ErrCode
	debug string
}

func (e goAwayError) Error() string {
	if e.debug == "" {
		return fmt.Sprintf("%v (%v)", ErrGoAway, e.code)
	}
	return fmt.Sprintf("%v (%v: %s)", ErrGoAway, e.code, e.debug)
}
func (e goAwayError) Is(target error) bool { return target == ErrGoAway }

// connError is a protocol violation by the peer: the connection ends with
// GOAWAY carrying code. limit names the exceeded limit (an OnLimit reason)
// when the violation is abuse rather than a broken peer.
type connError struct {
	code   http2.ErrCode
	reason string
	limit  string
}

func (e connError) Error() string {
	return fmt.Sprintf("http2 protocol error %v: %s", e.code, e.reason)
}
