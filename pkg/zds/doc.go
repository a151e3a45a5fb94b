// Package zds implements ZDS, the pod hand-off protocol between the node agent
// (cni-agent) and ztunnel, wire-compatible with Istio (types from
// istio.io/istio/pkg/zdsapi).
//
// # Transport
//
// A SOCK_SEQPACKET unix socket, by default /var/run/ztunnel/ztunnel.sock. The
// agent listens ([Server]); ztunnel connects ([Client]). Every packet holds
// exactly one serialized protobuf message, at most [MaxMessageSize] bytes. A
// netns file descriptor travels as SCM_RIGHTS ancillary data in the same
// packet as the message it belongs to. A zero-length packet is treated as the
// peer closing the connection. An ack's error text is capped at 512 bytes
// (Istio's agent reads acks into a 1 KiB buffer).
//
// # Conversation
//
//  1. ztunnel sends a ZdsHello (version V1). The agent does not answer it.
//  2. The agent sends its snapshot: for every pod it knows, an AddWorkload
//     carrying the pod's netns fd, or, when it has no netns for the pod, a
//     KeepWorkload (no fd, as zds.proto and Istio's agent define it) asking ztunnel to keep whatever it has for that uid.
//     Then SnapshotSent. ztunnel then drops every pod whose uid was not in
//     the snapshot.
//  3. From then on the agent sends AddWorkload (with fd) and DelWorkload (uid,
//     no fd) as pods come and go. KeepWorkload after SnapshotSent, or a second
//     SnapshotSent, is a protocol error.
//
// Every WorkloadRequest is answered by exactly one WorkloadResponse{ack}; the
// ack's error string is empty on success. The agent sends the next request
// only after the previous one was acked (lock-step), so an ack belongs to the
// single outstanding request. ztunnel never sends anything else after hello.
//
// # Validation and error handling
//
// Requests are decoded with [DecodeRequest]: exactly one payload field must be
// present on the wire (a duplicated or second oneof field is rejected, not
// merged), uids must be non-empty, an add must carry exactly one fd and that
// fd must be a namespace file (nsfs), keep/del/snapshot_sent must carry none.
// Any fd not handed to the caller is closed: no path leaks a descriptor.
//
// Client (ztunnel side): a request that fails to decode or validate (garbage,
// two payloads, unknown payload kind, oversized or truncated packet, missing
// or unexpected fds) is answered with an error ack and the connection is
// kept: SEQPACKET preserves message boundaries, so one bad packet cannot
// desynchronize the stream. The handler is not called for it. I/O errors end
// the connection; [Client.Run] reconnects with exponential backoff and the
// agent resends a full snapshot.
//
// Server (agent side): a malformed or missing hello refuses the new
// connection (see Admission). A malformed ack, an ack carrying fds, a
// message while no request is outstanding, or an ack that does not arrive
// within the ack timeout ends that ztunnel connection (a late ack could
// otherwise be matched to the wrong request). ztunnel reconnects and
// receives a full snapshot.
//
// # Admission
//
// A new connection is checked before it may touch the current one: the
// peer's effective uid (SO_PEERCRED) must be allowed (default: root and the
// agent's own uid) and pass the optional VerifyPeer hook, then a valid
// hello must arrive within the ack timeout. Only then does it replace the
// current connection (a ztunnel restart). A refused connection is closed,
// logged with the peer's pid and uid, counted ([Server.Refused]) and
// reported to OnRefused; the current ztunnel never notices it. At most
// MaxPending connections wait for their hello; a newer one drops the
// oldest waiting, so idle connections cannot keep a real ztunnel out (it
// sends its hello at once) nor exhaust the agent.
//
// # Concurrency and ownership
//
// [Server] methods are safe for concurrent use; requests are written one at
// a time in arrival order, after the current connection's snapshot. The
// Server never closes a caller's [Pod].Netns: it duplicates the descriptor
// for the duration of the send. The [Handler] receives ownership of
// [WorkloadAdd].Netns and must close it, also when it returns an error. The
// Client calls the Handler from one goroutine, in message order.
package zds
