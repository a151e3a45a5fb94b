// Command istiod is Ambit's control plane. For now it runs the certificate
// authority: the TLS gRPC service istio.v1.auth.IstioCertificateService on
// --grpc-addr (default :15012), authenticating callers with a static token
// file, and writes the root certificate to --root-cert-out for clients to
// trust. It stops gracefully on SIGTERM or SIGINT. Flags and their
// environment variables are in config.go; run istiod -h for the list.
package main
