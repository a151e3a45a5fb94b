package agentapi

import (
	"errors"
	"fmt"
)

// ErrUnreachable is wrapped by Client errors when no answer came from the
// agent: the socket is missing, the connection was refused or broke.
var ErrUnreachable = errors.New("node agent unreachable")

// RemoteError is an error the agent reported for a request.
type RemoteError struct {
	// Op is the endpoint, e.g. "enroll".
	Op string
	// StatusCode is the HTTP status the agent answered with.
	StatusCode int
	// Message is the agent's own message.
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("node agent %s failed: %s", e.Op, e.Message)
}

// UnreachableError is returned when no answer came from the agent. It
// matches ErrUnreachable with errors.Is.
type UnreachableError struct {
	Op     string
	Socket string
	// Err is the transport error, e.g. "connect: no such file or directory".
	Err error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("node agent at %s unreachable (%s): %v", e.Socket, e.Op, e.Err)
}

// Unwrap returns the transport error.
func (e *UnreachableError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrUnreachable) true.
func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }
