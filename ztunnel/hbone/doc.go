// Package hbone implements HBONE, Istio's tunnel: HTTP/2 CONNECT over mutual
// TLS 1.3 (ALPN "h2", no SNI), one HTTP/2 connection carrying many CONNECT
// streams. It has its own HTTP/2 stream engine on x/net's http2.Framer and
// hpack (not http2.Server/Transport): big frames, batched window updates and
// coalesced writes, and true half-close in both directions.
//
// API summary:
//
//	// Server (port 15008):
//	srv, err := hbone.NewServer(hbone.ServerConfig{
//		TrustDomain:    "cluster.local",
//		TrustBundle:    func() *x509.CertPool { return roots },  // per handshake
//		GetCertificate: getCert,                                  // per handshake
//		Handler:        hbone.RelayHandler(authorize, dialer),    // or your own Handler
//		OnLimit:        func(reason string) { limitHits.WithLabelValues(reason).Inc() },
//		// MaxConcurrentStreams, StreamOpenRate/Burst, ResetRate/Burst: see Abuse bounds
//	})
//	go srv.Serve(ln)      // caller-made listener; also srv.ServeConn(nc)
//	srv.Shutdown(ctx)     // GOAWAY, drain; srv.Close() to cut
//
//	// Client pool:
//	pool, err := hbone.NewPool(hbone.PoolConfig{
//		TrustBundle:       func() *x509.CertPool { return roots },
//		ClientCertificate: func(src spiffe.ID) (*tls.Certificate, error) { ... },
//		Dialer:            markedDialer, // optional
//	})
//	s, err := pool.Dial(ctx, hbone.Key{Source: me, Destination: peer, Addr: podIP15008},
//		netip.MustParseAddrPort("10.0.1.5:8080"), hbone.Headers{Forwarded: `for="10.0.0.7"`})
//	// s is a *hbone.Stream: net.Conn plus CloseWrite (END_STREAM).
//	hbone.Relay(s, downstreamTCP)  // both ways with half-close; closes both
//
// Contracts:
//
//   - Identity comes only from verified certificates. The server requires a
//     client certificate chaining to TrustBundle() with a SPIFFE ID in
//     TrustDomain (Request.Peer). The client requires the server's verified
//     ID to equal Key.Destination (else a *PeerIdentityError).
//   - The server answers anything but CONNECT with 405, a malformed request
//     (bad :authority ip:port, :scheme/:path, :protocol, connection headers)
//     with 400, and what Handler.Authorize refuses with 404 (ErrNotServed),
//     400 (ErrBadRequest) or 403 (otherwise); the reason is the text body.
//     The client turns a non-2xx answer into a *RejectedError.
//   - Stream: Read/WriteTo until io.EOF (peer's END_STREAM); Write/ReadFrom
//     block on the peer's flow-control window; CloseWrite sends END_STREAM;
//     Close resets (RST_STREAM CANCEL) whatever has not finished. A server
//     stream is answered 200 by Accept or implicitly by the first Write or
//     CloseWrite; Reject answers 4xx/5xx.
//   - The pool keys connections by Key, opens another connection when one
//     reaches the server's SETTINGS_MAX_CONCURRENT_STREAMS, and evicts a
//     connection on read error, GOAWAY (any code, ENHANCE_YOUR_CALM
//     included) or an unanswered keep-alive PING. A stream the server
//     refuses (REFUSED_STREAM, never processed: RFC 9113 section 8.7) is
//     retried once on another connection, dialed if none has room.
//   - Handler context: the ctx given to Authorize and ServeHBONE is
//     cancelled as soon as the stream is over for the server: the peer
//     reset it, both directions ended, the server reset it, the connection
//     closed (peer EOF, I/O error, GOAWAY with an error code) or the
//     server was closed. Handlers pass it to everything
//     they wait on, dials above all.
//   - Windows: 4 MiB per stream, 16 MiB per connection, returned in quarter
//     window batches as the application reads; frames up to 1 MiB.
//     Buffered received data never exceeds the advertised windows.
//   - Errors from Pool.Dial read "hbone to <addr> as <source>: <cause>" and
//     wrap the package's sentinels (ErrPeerIdentity, ErrRejected, ...).
//
// Abuse bounds (HTTP/2 "rapid reset", CVE-2023-44487, and kin), per
// server connection, as Go's x/net server, Envoy and Istio's ztunnel bound
// them:
//
//   - Work in flight: a peer-opened stream holds a slot of
//     MaxConcurrentStreams (default 1000, also what SETTINGS advertises)
//     from its HEADERS until its handler (Authorize then ServeHBONE) has
//     returned, not until the peer resets it. HEADERS beyond the limit are
//     answered RST_STREAM(REFUSED_STREAM) without starting anything
//     (OnLimit "refused_stream"). Resetting a stream cancels its handler's
//     ctx at once, so the slot comes back as soon as the handler returns.
//   - Stream openings: a token bucket per connection charges every HEADERS
//     that opens a stream, refused or malformed ones included:
//     StreamOpenRate, default 2000/s, bursts of StreamOpenBurst, 4000.
//   - Resets: a token bucket per connection charges one token for a
//     premature reset, the peer's RST_STREAM on a stream not answered yet
//     (Envoy's term) or a stream error the peer provoked (DATA after
//     END_STREAM or beyond the window, window overflow, malformed
//     trailers: "MadeYouReset", CVE-2025-8671), and a quarter of one for a
//     reset after the answer: ResetRate, default 200/s, bursts of
//     ResetBurst, 400.
//   - SETTINGS frames: 10/s, bursts of 100 (fixed): each may walk every
//     stream's window.
//   - Past a bucket the connection gets GOAWAY(ENHANCE_YOUR_CALM), flushed
//     before the close, and is closed; every handler's ctx is cancelled.
//     The server logs it at Info with the peer's identity, remote address
//     and limit, and calls OnLimit once ("stream_rate", "reset_rate",
//     "settings_rate"; "control_queue" when the peer made the server queue
//     too many control frames without reading them).
//
// Why these defaults: a connection carries one source identity's streams
// to one destination (Key). A source ztunnel opens one stream per app
// connection, half-closes it when the app is done, and resets it only when
// the app aborts: after the answer when a live connection is aborted (a
// quarter token each: 800/s sustained), before it when the app gave up
// while the destination was still being dialed, which is rare outside an
// outage of the destination. 2000 new connections a second sustained from
// one identity to one pod, 4000 at once (a whole 1000-stream connection
// re-opened after a GOAWAY, with room to spare), is above what a pod
// serves; TestLegitimateTrafficWithinLimits runs thousands of sequential
// streams and hundreds of aborts on one connection under them. A
// rapid-reset attacker resets before the answer by construction: it gets
// about 400 handler starts at once and 200/s after, per connection, each
// cancelled at once, never more than MaxConcurrentStreams in flight.
// Negative rates disable a bucket.
//
// Not bounded here: PING floods (answered at the sender's own cost; a
// sender that does not read is cut off by the control-queue bound), frames
// on closed streams (WINDOW_UPDATE, RST_STREAM, PRIORITY, empty DATA: a
// map lookup each, nothing started), CONTINUATION floods (x/net's Framer
// stops a header block at MaxHeaderListSize), and connections per peer
// (ztunnel/proxy's per-pod limits).
//
// Concurrency: per connection one goroutine reads frames and never writes
// to the socket; writers take a mutex and the last one out flushes, so
// frames from many streams leave in one TLS write, and under TLS many
// records in one syscall. Control frames the reader owes (SETTINGS ack,
// PING ack, WINDOW_UPDATE, RST_STREAM) go through a small queue written by
// whichever writer comes next or by a write-loop goroutine.
package hbone
