// Package identity manages ztunnel's workload certificates: one per SPIFFE
// identity of the pods on the node, obtained from the CA on their behalf.
//
// Contract of Manager:
//   - GetCertificate fetches an identity's certificate on first need;
//     concurrent first requests share one fetch (single-flight), later ones
//     get the cached certificate.
//   - Each certificate is renewed in the background at RenewFraction ±
//     RenewJitter of its lifetime (default 50 % ± 10 %). A failed fetch is
//     retried with exponential backoff (jittered, capped at MaxBackoff) until
//     it succeeds or the identity is forgotten; meanwhile the still-valid
//     certificate keeps being served.
//   - An expired certificate is never returned: with no valid certificate,
//     GetCertificate waits for a fetch in flight, or fails with an error that
//     names the identity and the CA's last error.
//   - Forget stops an identity's renewals (call it when the last pod with that
//     service account leaves the node). Close, or cancelling the context given
//     to New, stops every goroutine; Close returns when they have.
//   - Roots is the trust bundle (the last certificate of each issued chain);
//     Certificates is a snapshot for the admin endpoint.
//
// The Manager reaches the CA only through CertSource and time only through
// Clock, the seams its tests replace. CAClient is the production CertSource:
// it speaks Istio's IstioCertificateService over gRPC with TLS and a bearer
// token, and rejects any response that does not match what it asked for.
package identity
