// Command ztunnel is Ambit's node L4 proxy. It takes pods from the node
// agent over ZDS, opens their capture listeners inside each pod's network
// namespace, carries their traffic in HBONE tunnels with per-pod SPIFFE
// certificates from the CA, enforces L4 policy, and serves metrics
// (:15020/stats/prometheus), readiness (:15021/healthz/ready) and an admin
// endpoint on localhost (:15000: /config_dump, /debug/pprof/).
//
// Until istiod serves workload xDS, the mesh state comes from
// --local-config, reloaded on change. Flags are listed in config.go; each
// can also be set by the environment (AMBIT_<FLAG>).
package main
