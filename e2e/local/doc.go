// Package local holds the end-to-end tests of local mode: they build the
// binaries, drive `ambitctl local` as a process (up, status, exec, apply,
// delete, down) and assert on real traffic through the mesh.
//
// They need root and Linux; without them they skip (fail under CI=true).
// A binary whose package does not exist yet (cni-agent, ztunnel) makes the
// tests that need it skip with its name, and fail under CI=true. The tests
// use the global ambitl- namespace prefix: they replace any local mesh
// running on the machine.
package local
