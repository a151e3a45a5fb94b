// Package attack is the attackers' toolbox of the attack suite
// (e2e/local attack_test.go): what a hostile pod does to its node's mesh,
// written against the wire, not against Ambit's packages, so that a fix in
// ztunnel, the agent or istiod cannot also fix the attacker.
//
//   - Sockets creates sockets inside one pod's network namespace on one OS
//     thread kept there for its life, and connects them from any thread:
//     the attacker never holds a thread per connection in progress, however
//     many it opens, so its own figures do not mix with the victim's.
//   - H2Conn is a raw HTTP/2 client over TLS 1.3 (x/net's Framer and
//     hpack): CONNECT streams with any :authority, RST_STREAM at will,
//     streams past the peer's limit; it answers SETTINGS and PING and
//     records what the peer says (statuses, resets, GOAWAY).
//   - ZDSTakeover plays a rogue ztunnel on a node's ZDS socket: a bad hello,
//     then valid hellos, acking whatever it is sent and counting the netns
//     descriptors it receives.
//   - Squat binds a foreign SO_REUSEPORT listener and counts what it steals.
//
// The last two run inside a pod (cmd/ambit-attack, started with `ambitctl
// local exec`), so that the agent and ztunnel see a pod's process, as they
// would in a real attack. Every function here is bounded in time by its
// context or an explicit duration and leaves no socket open when it returns.
// Addresses are the caller's: the suite only aims at namespaces and ranges
// the local mesh created.
package attack
