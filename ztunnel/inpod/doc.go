// Package inpod manages ztunnel's in-pod proxies from the node agent's ZDS
// requests: Manager is the zds.Handler.
//
// For each added pod it makes a socket factory in the pod's network
// namespace (the netns descriptor ZDS handed over) whose sockets all carry
// SO_MARK Config.Mark, so the pod's capture rules skip them; listeners also
// get SO_REUSEPORT (a new ztunnel can bind beside the old one and take
// over) and plain TCP (no MPTCP: SO_ORIGINAL_DST needs TCP). It opens the
// outbound (15001), inbound (15006) and HBONE (15008) listeners there and
// starts a proxy.PodProxy on them; the add is acked only once they listen.
//
// Port squatting. SO_REUSEPORT lets any process of ztunnel's uid in the
// pod bind beside ztunnel's listeners ([::]:port, joining their group) or
// in front of them (0.0.0.0:port or a specific address:port, which the
// kernel prefers for the connections they match) and take connections.
// Measured without defences, 20 connections each: 10 to a [::]:15008
// squatter, all 20 to 0.0.0.0:15001 or 127.0.0.1:15006 squatters. Defences:
//
//   - Prevention, SK_LOOKUP (the namespace guard): an eBPF program attached
//     to the pod's namespace through a link ztunnel holds for the pod's
//     life hands every TCP connection to an in-pod port, whatever its
//     address, to ztunnel's listener for that port (SOCKHASH map),
//     skipping SO_REUSEPORT selection. It assigns with
//     BPF_SK_LOOKUP_F_REPLACE: a new ztunnel that takes over attaches its
//     own program after the old one's and so takes all new connections
//     from then on; the old one keeps the connections it accepted, and
//     serves again if the new one's listener or link goes away. The link
//     closes when the pod stops being served or the process exits.
//   - Prevention, SK_REUSEPORT (the fallback when the kernel refuses
//     SK_LOOKUP): each listener gets a program, attached with
//     SO_ATTACH_REUSEPORT_EBPF, whose REUSEPORT_SOCKARRAY map holds only
//     that listener: every new connection of the group goes to it, and is
//     refused once it is closed, never to another member. A new ztunnel
//     attaching its own program to the group takes all new connections
//     from then on. It covers only the group ([::]:port squatters), and its
//     program stays on the group after the old ztunnel exits: a successor
//     that attaches none gets no connections. A socket cannot be in both
//     maps, so a listener has one guard or the other.
//
// When the kernel refuses both (no CAP_BPF, old kernel) the Manager logs a
// warning once and serves pods with detection only; Config.NoListenerGuard
// turns both guards off.
//
// Detection, guarded or not: for each served pod, every
// Config.ForeignListenerInterval a NETLINK_SOCK_DIAG socket created in the
// pod's namespace (through the netns socket pool, kept for the pod's life)
// lists its TCP listeners. One on an in-pod port whose inode is not one of
// this pod's listeners is foreign, unless it carries ztunnel's SO_MARK
// (another ztunnel taking or handing over: setting a mark needs
// CAP_NET_ADMIN, with which a process could remove the capture rules
// anyway). Each foreign socket is logged once as an error (port, address,
// inode, socket uid), and Config.OnForeignListener gets the count per port
// whenever it changes. The scan stops, and its counts return to 0, when the
// pod stops being served.
//
// Contract with ZDS: AddPod for a uid already served keeps the running
// proxy when the namespace and pod details are unchanged, and replaces it
// otherwise. DelPod and SnapshotDone (for pods not in the snapshot) close a
// pod's listeners, connections and HBONE pool, and release its netns
// descriptor. Run re-checks open inbound connections on every state change
// and, when it ends, closes every pod. All methods are safe for concurrent
// use.
package inpod
