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
//     connection on read error, GOAWAY or an unanswered keep-alive PING.
//   - Windows: 4 MiB per stream, 16 MiB per connection, returned in quarter
//     window batches as the application reads; frames up to 1 MiB.
//     Buffered received data never exceeds the advertised windows.
//   - Errors from Pool.Dial read "hbone to <addr> as <source>: <cause>" and
//     wrap the package's sentinels (ErrPeerIdentity, ErrRejected, ...).
//
// Concurrency: per connection one goroutine reads frames and never writes
// to the socket; writers take a mutex and the last one out flushes, so
// frames from many streams leave in one TLS write, and under TLS many
// records in one syscall. Control frames the reader owes (SETTINGS ack,
// PING ack, WINDOW_UPDATE, RST_STREAM) go through a small queue written by
// whichever writer comes next or by a write-loop goroutine.
package hbone
