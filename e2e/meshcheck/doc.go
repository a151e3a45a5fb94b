// Package meshcheck holds the assertions end-to-end tests share about what
// the mesh did to a call. Only tests under e2e/ import it.
//
// ExpectDenied is the one refusal check: a call counts as refused by policy
// only when ztunnel reset it (a timeout, a refused connect or an orderly
// close is not a refusal) and the ztunnel's DENY counter for that source and
// destination rose by at least the number of refused calls; and the refusal
// must last (LastingCalls more calls spread over LastingOver, all reset).
// Under CI load a client timeout therefore fails the check instead of
// passing it.
//
// ResetWatch lets an HTTP call report a reset that net/http turned into
// EOF. DenyCount reads the DENY counter from ztunnel's Prometheus text, and
// MetricSum any sample sum (for positive checks too).
package meshcheck
