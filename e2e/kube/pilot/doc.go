// Package pilot runs a real Istio pilot-discovery, the reference for Ambit's
// interop and differential tests, against an e2e/kube/cluster API server, and
// talks workload discovery (delta ADS for istio.workload.Address and
// istio.security.Authorization) to it or to Ambit's istiod.
//
// # The binary
//
// build.sh (next to this file) builds pilot-discovery with `go install
// istio.io/istio/pilot/cmd/pilot-discovery@<version>`, the version of
// istio.io/istio that ambit's go.mod pins, into
// $AMBIT_CACHE/pilot-discovery-<version>/ (AMBIT_CACHE defaults to
// $HOME/.cache/ambit). The first build takes ~8 minutes on two cores;
// EnsureBinary runs it when the binary is missing, so `go test` alone works on
// a fresh machine. AMBIT_PILOT_BIN points at a prebuilt binary instead;
// AMBIT_KUBE_NO_BUILD=1 makes a missing binary skip the tests (fail under
// CI=true).
//
// # Running it outside a cluster
//
// Start applies Istio's and Gateway API's CRDs (pilot waits for them),
// creates istio-system, and starts pilot-discovery in a temporary directory
// with: `discovery --kubeconfig <admin> --meshConfig <file> --networksConfig
// <file> --domain cluster.local --clusterID Kubernetes`, every port
// (--httpAddr, --grpcAddr, --secureGRPCAddr, --monitoringAddr, --httpsAddr)
// on a free loopback port and --ctrlz_port 0, and the environment
// PILOT_ENABLE_AMBIENT=true, POD_NAMESPACE=istio-system, POD_NAME,
// CLUSTER_ID=Kubernetes, REVISION=default, INJECT_ENABLED=false (no injector
// templates) and an empty VALIDATION_WEBHOOK_CONFIG_NAME (no webhook to
// patch). It then waits for /ready on the HTTP port. Pilot's CA is
// self-signed (secret istio-ca-secret); its root is published in every
// namespace's istio-ca-root-cert ConfigMap (RootCert) and signs its serving
// certificate for istiod.istio-system.svc. xDS authentication and the xDS
// identity check stay on: a client presents a service-account token with
// audience istio-ca, which pilot checks with TokenReview.
//
// # Workload discovery client
//
// Watch opens one delta ADS stream, subscribes wildcard to both types, ACKs
// every response and keeps the resources it received (decoded into
// istio.io/istio/pkg/workloadapi types), so tests can wait for a state with
// Watcher.WaitFor. It speaks to pilot (plaintext 15010, or TLS 15012 with a
// token) and to Ambit's istiod/xds server alike.
package pilot
