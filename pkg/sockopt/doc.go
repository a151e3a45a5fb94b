// Package sockopt reads and sets the socket options Ambit's data path relies
// on: the original destination of a REDIRECTed connection (SO_ORIGINAL_DST,
// IP6T_SO_ORIGINAL_DST) and the socket mark ztunnel puts on its own sockets
// so capture rules skip them (SO_MARK).
//
// Listeners whose connections are read with OriginalDst should be plain TCP:
// Go 1.26 listeners default to MPTCP, so call
// net.ListenConfig.SetMultipathTCP(false) on them.
package sockopt
