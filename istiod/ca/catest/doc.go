// Package catest starts a real istiod CA (ca.Server over TLS on 127.0.0.1)
// inside a test, for packages that need certificates from it, such as
// ztunnel/identity:
//
//	c := catest.Start(t, catest.Options{})
//	conn, err := grpc.NewClient(c.Addr, grpc.WithTransportCredentials(credentials.NewTLS(c.ClientTLS())))
//	// send metadata "authorization: Bearer "+c.Token; trust c.RootsPEM
//
// The server stops when the test ends. Only tests import this package.
package catest
