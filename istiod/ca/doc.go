// Package ca is istiod's certificate authority: it holds the signing
// certificate and key, issues short-lived SPIFFE leaf certificates to
// workloads, and serves Istio's gRPC
// istio.v1.auth.IstioCertificateService/CreateCertificate.
//
// # Where the CA comes from
//
// LoadOrCreate reads Istio's "cacerts" layout from Options.CADir:
//
//	ca-cert.pem     the signing certificate (a root or an intermediate)
//	ca-key.pem      its private key (PKCS#8, PKCS#1 RSA or SEC1 EC)
//	cert-chain.pem  optional: certificates from ca-cert up to the root, in any
//	                order, with or without ca-cert and the root themselves
//	root-cert.pem   the root(s); optional only when ca-cert is self-signed or
//	                cert-chain.pem ends with the root
//
// and checks that the key matches, ca-cert is a valid, unexpired CA, and the
// chain verifies to a root. Without a CADir it keeps a self-signed root
// (ECDSA P-256, ten years, Organization = trust domain) in Options.StateDir
// as ca-cert.pem and ca-key.pem (mode 0600), created once, written atomically,
// and never regenerated or overwritten: a partial or unreadable set is an error
// naming the file and what to do.
//
// # Issuing
//
// Server implements CreateCertificate. Every call is authenticated by an
// Authenticator (a bearer token in the "authorization" metadata), then the
// CSR is validated (one SPIFFE URI SAN in the CA's trust domain, no other SANs,
// ECDSA P-256/P-384 or RSA >= 2048 bits), then the caller is asked whether it
// may request that identity (Caller.Authorize). Every refusal is a gRPC
// status naming the field and the fix, and is logged with the caller, the
// requested identity and the reason. The response chain is leaf first, root
// last.
//
// # Embedding (tests and demos)
//
//	auth, err := ca.LoadOrCreate(ca.Options{TrustDomain: "cluster.local", StateDir: dir})
//	// or, in memory: auth, err := ca.NewSelfSigned("cluster.local")
//	tokens, err := ca.NewStaticTokens("cluster.local", []ca.TokenEntry{{
//		Name: "node-a", Token: "0123456789abcdef", Identities: []string{"spiffe://cluster.local/ns/*/sa/*"},
//	}})
//	srv, err := ca.NewServer(auth, tokens, ca.ServerOptions{Logger: logger})
//	tlsConf, err := auth.ServingTLSConfig([]string{"istiod.istio-system.svc"}, []net.IP{net.IPv4(127, 0, 0, 1)})
//	lis, err := net.Listen("tcp", "127.0.0.1:0")
//	go srv.Serve(ctx, lis, tlsConf) // returns after ctx is cancelled
//
// Clients trust auth.RootsPEM() and dial lis.Addr() with server name
// "istiod.istio-system.svc" (or the IP). Alternatively register the service on
// an existing grpc.Server with srv.Register.
//
// # Static token file (local mode)
//
// See ParseStaticTokens for the format; each token names a caller and
// either the SPIFFE IDs or patterns (spiffe://<td>/ns/*/sa/*) it may
// request, or a node: the caller is then that node's ztunnel (NodeBound),
// authorized as on Kubernetes by AuthorizeNode against the pods view given
// to SetNodePods (local mode: the pods of istiod's config dir), and its xDS
// streams are bound to that node.
//
// # Node authorization
//
// AuthorizeNode is Istio's node authorization, shared by the static node
// tokens and istiod/ca/kubeauth: the ztunnel of node N may obtain
// spiffe://<td>/ns/<ns>/sa/<sa> only while a pod of namespace ns running as
// service account sa is on N and has not terminated. The refusal wraps
// ErrPermissionDenied and names the service account and the node; a view
// that cannot answer is an error the CA reports as Unavailable.
package ca
