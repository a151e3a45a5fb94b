// Package echo is the test workload of the end-to-end tests and the demo:
// HTTP, TCP and gRPC echo servers that say which pod answered and which peer
// address they saw, and a client that makes N calls and summarises them.
//
// Wire contracts (tests parse these):
//   - HTTP: any request gets 200 with body "pod=<name> peer=<ip:port> path=<path>\n"
//     and header X-Ambit-Pod: <name>.
//   - TCP: for every line received the server writes
//     "pod=<name> peer=<ip:port> echo=<line>\n".
//   - raw TCP: bytes are echoed verbatim; the server half-closes after the
//     client does.
//   - gRPC: grpc.testing.TestService/UnaryCall answers with Hostname=<name> and
//     the request payload echoed.
package echo
