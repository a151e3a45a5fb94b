// Package spiffe parses, formats and validates the SPIFFE identities Ambit
// gives workloads: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
//
// Every hop that learns a peer's identity gets it from a verified certificate
// (FromCertificate), never from a header.
package spiffe
