// Package proxy is ztunnel's per-pod data path: the three listeners ztunnel
// opens inside an enrolled pod's network namespace and what it does with
// each connection.
//
//   - Outbound (15001): the original destination comes from SO_ORIGINAL_DST;
//     route.Outbound decides. HBONE: a CONNECT stream through the pod's own
//     hbone.Pool (which dials from the pod's namespace) to the destination's
//     15008, presenting the pod's identity and verifying the destination's;
//     Passthrough: a direct TCP connection dialed from the pod's namespace.
//     A destination that speaks HBONE is never reached in plaintext: when the
//     tunnel fails the client connection is reset.
//   - Inbound plaintext (15006): allowed or refused by the destination's L4
//     policies with no peer identity (route.Inbound); allowed connections are
//     relayed to the pod's own address, dialed inside the pod's namespace.
//   - Inbound HBONE (15008): an hbone.Server whose handler serves only this
//     pod's addresses (404 otherwise) and applies policy to the verified peer
//     identity (403 when denied), then relays to the pod's address with
//     half-close.
//
// The decisions are pure functions of a state.View (decide.go, tested
// without sockets); the I/O around them is in pod.go. Inbound connections
// are registered per pod so Recheck can close the ones a policy change now
// denies. Every connection gets one access-log line at close and Istio's TCP
// metrics (ztunnel/metrics).
//
// Ownership: PodProxy owns the listeners and the pool it is given or makes;
// Close closes them and every open connection, and waits for its
// goroutines. The Dialer (the pod's socket factory) is borrowed.
package proxy
