// Command ztunnel is Ambit's node L4 proxy. It takes pods from the node
// agent over ZDS, opens their capture listeners inside each pod's network
// namespace, carries their traffic in HBONE tunnels with per-pod SPIFFE
// certificates from the CA, enforces L4 policy, and serves metrics
// (:15020/stats/prometheus), readiness (:15021/healthz/ready) and an admin
// endpoint on localhost (:15000: /config_dump, /debug/pprof/).
//
// The mesh state (workloads, services, policies) comes from istiod's workload
// discovery (delta ADS on --xds-addr, default the CA's --ca-addr, verified
// and authenticated as the CA is); readiness waits for the first full state,
// and while istiod is unreachable the last good state keeps being served
// (the client reconnects with backoff). With --local-config the state comes
// from that file instead, reloaded on change (local file mode, for tests).
// ztunnel presents itself to istiod as Istio's ztunnel does, so a real Istio
// istiod serves it too: node ID "ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local"
// (--pod-ip, --pod-name, --pod-namespace) and the "ClusterID" header
// (--cluster-id) on CA and xDS requests, without which Istio's CA refuses
// certificates asked on behalf of the node's pods.
// Flags are listed in config.go; each can also be set by the environment
// (AMBIT_<FLAG>).
package main
