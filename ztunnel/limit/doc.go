// Package limit bounds what one party may ask of ztunnel, so that an abusive
// pod degrades itself and not its neighbours on the node.
//
// A Limiter counts one party's connections in three ways: connections in
// progress (accepted, not yet connected upstream), open connections
// (connected and relaying) and new connections per second (a token bucket).
// Admit takes a Ticket or fails with an error wrapping ErrLimited that names
// the limit; the Ticket moves from in progress to open with Established and
// gives its slot back with Done. A Set holds one Limiter per key (a source
// address) and forgets keys that are idle.
//
// Contracts:
//   - Admit never blocks: a connection over a limit is refused at once, so
//     the accept loops keep serving everyone else.
//   - Every Ticket must be ended with Done exactly once (Established is
//     optional and idempotent); Done is idempotent too.
//   - A zero value in Config turns that limit off.
//
// Concurrency: every method is safe for concurrent use; a Limiter holds one
// mutex for a few integer updates per call.
package limit
