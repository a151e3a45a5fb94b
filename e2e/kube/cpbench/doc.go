// Command cpbench is the control-plane scale benchmark of issue 4: Ambit's
// istiod and Istio's pilot-discovery, each alone, against the same API
// server holding N pods and S services, with M simulated ztunnel delta ADS
// clients. It prints figures and asserts nothing.
//
//	go run ./e2e/kube/cpbench                      # 10,000 pods, 1,000 services, 100 clients, 20 changes
//	go run ./e2e/kube/cpbench -pods 1000 -services 100 -clients 10 -changes 5
//
// # What it does
//
//  1. Starts a real cluster (e2e/kube/cluster: etcd, kube-apiserver,
//     kube-controller-manager; binaries cached under ~/.cache/ambit, built
//     by `bash e2e/kube/build.sh` when missing), applies Istio's and
//     Gateway API's CRDs.
//  2. Creates -namespaces namespaces labelled istio.io/dataplane-mode=ambient,
//     -nodes Node objects (Ready, an InternalIP each), -services services
//     and -pods pods (annotation ambient.istio.io/redirection=enabled, bound
//     to the simulated nodes round robin, each pod with app=<its service>).
//     Each pod's status (Running, Ready, a unique IP from 10.200.0.0/13,
//     its node's host IP) is written through the API as a kubelet would.
//     Writes go through client-go's limiter (-qps) from -workers goroutines,
//     with progress on stderr; then the run waits until the EndpointSlice
//     controller lists every pod, so no controller writes during the
//     measurements. kwok is not used: it would add a process simulating
//     node heartbeats and pod lifecycles beside the servers on two cores,
//     while writing the objects once, directly, is all the servers need.
//  3. For each server in -servers (default ambit, then pilot; one after
//     the other, never both at once, since two servers would share the two
//     cores), starts it as a child process: Ambit's istiod binary with
//     --config-source kubernetes, or pilot-discovery as e2e/kube/pilot runs
//     it. Clients connect over TLS and authenticate as Istio's ztunnel does
//     (a token of ServiceAccount istio-system/ztunnel with audience istio-ca,
//     one per client, verified by the server with TokenReview).
//  4. Runs the clients in one separate process (this program again, with
//     AMBIT_CPBENCH_ROLE=clients), so their CPU does not count against the
//     server. They are lite clients: each opens its own gRPC connection and
//     delta ADS stream, subscribes wildcard to Address and Authorization,
//     scans each response's wire format for resource and removed names
//     (bodies are skipped, nothing is decoded or stored), ACKs every
//     response, and reopens a failed stream with exponential backoff (pilot
//     and Ambit answer ResourceExhausted above their new-stream rate).
//     First one probe client waits for the whole state (the server's start
//     to full state); then the M clients connect at once and each one's
//     sync time runs from its first stream open to holding all N+S of the
//     bench's Address resources. The run then waits (at most 30 s) until the
//     server uses under 10 % of a core for a second, so the first change
//     does not pay for work the sync left (pilot keeps pushing for a few
//     seconds after rate-limiting streams). Then C changes are written through the API
//     server, in turn: a pod's version label (its Workload's canonical
//     revision changes), an AuthorizationPolicy created, updated and
//     deleted (the removal must arrive); for each, the time from the start
//     of the write to each client's response holding the resource.
//  5. Reads the server's CPU time (/proc/<pid>/stat) before and after the
//     sync and the changes, its RSS after sync and its peak RSS (VmHWM),
//     and prints a table of both servers with the ratio pilot/ambit (above 1:
//     Ambit is lower). For reading the server's figures on shared cores, the
//     CPU of the clients process and of the cluster during each phase is
//     printed too (in parentheses).
//
// Every wait has a deadline (-sync-timeout, -change-timeout,
// -settle-timeout, -timeout); figures a server missed print as n/a and the
// reason is listed under the table. Child processes die with the program
// (Pdeathsig) and are killed, and temporary directories removed, on exit.
//
// DESIGN.md section 7 has pilot-discovery's reference on this machine kind:
// sync p50 2–5 s for 100 clients, change to all 100 p50 ~120 ms / p99
// ~140 ms, 0.7–1.2 GB RSS.
package main
