// Package local holds the end-to-end tests of local mode: they build the
// binaries, drive `ambitctl local` as a process (up, status, exec, apply,
// delete, stop, start, down) and assert on real traffic through the mesh.
//
// TestDemoLifecycle and TestDownAfterCrash cover the mesh's lifecycle and
// that down leaves nothing behind. TestMeshBehaviour shares one mesh among
// subtests that each leave it as they found it: the server's ztunnel sees
// the client's SPIFFE ID (metrics and access log), node-to-node traffic is
// TLS to :15008 and never the request's plaintext (tcpdump on the node's
// link, with a plaintext positive control), enrolled and non-enrolled pods
// talk under PERMISSIVE and STRICT, a pod fails closed with its node's
// ztunnel stopped and cannot start with its node's cni-agent stopped,
// un-enrolling a running pod removes its capture and listeners, and a killed
// ztunnel comes back without touching the pods.
//
// TestAttacks (attack_test.go) runs, against one live mesh, each attack of
// issue 7 bounded in time while a bystander pod on the attacked node calls
// through the mesh all along: self-loops through 15006, 15001 and an HBONE
// authority, HTTP/2 rapid reset, connect-and-reset churn, 3,000 connections
// to an unreachable address, a stream flood, a ZDS takeover, enrolling a
// foreign netns and a SO_REUSEPORT squatter. Each asserts the bystander's
// failures and longest outage, ztunnel's open files, threads and RSS during
// and 10 s after, and that nothing panicked or restarted; run with -v for
// the table of figures. TestNodeTokensBound checks that a node's token gets
// neither another node's certificates nor its xDS stream.
//
// They need root and Linux, and tcpdump, nft, ip and nsenter
// (hack/install-deps.sh); without them they skip (fail under CI=true).
// A binary whose package does not exist yet makes the tests that need it
// skip with its name, and fail under CI=true. The tests use the global
// ambitl- namespace prefix: they replace any local mesh running on the
// machine.
package local
