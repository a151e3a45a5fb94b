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
// They need root and Linux, and tcpdump, nft, ip and nsenter
// (hack/install-deps.sh); without them they skip (fail under CI=true).
// A binary whose package does not exist yet makes the tests that need it
// skip with its name, and fail under CI=true. The tests use the global
// ambitl- namespace prefix: they replace any local mesh running on the
// machine.
package local
