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
// pod bind beside ztunnel's listeners and take a share of their
// connections. Two defences:
//
//   - Prevention (the reuseport guard): each listener gets an
//     SK_REUSEPORT eBPF program, attached with SO_ATTACH_REUSEPORT_EBPF,
//     whose REUSEPORT_SOCKARRAY map holds only that listener: every new
//     connection of the SO_REUSEPORT group goes to it, and is dropped
//     (refused) once it is closed, never to another member. A new ztunnel
//     that takes over binds beside the old one and attaches its own program
//     to the group, replacing the old one, so it takes all new connections
//     from then on; the old one keeps the connections it accepted. A
//     successor that attaches no program (an older ztunnel, or one the
//     kernel refuses) gets nothing once the old listener closes, as the old
//     program stays on the group: restart such pods. The guard covers only
//     the group: a squatter bound to 0.0.0.0:port (an IPv4 socket, another
//     group, preferred for IPv4 by the kernel) or to a specific address
//     bypasses it and is only detected. When the kernel refuses the
//     program (no CAP_BPF, no SK_REUSEPORT support) the Manager logs one
//     warning and serves pods unguarded. Config.NoReuseportGuard turns the
//     guard off.
//   - Detection: for each served pod, every Config.ForeignListenerInterval
//     a NETLINK_SOCK_DIAG socket created in the pod's namespace (kept for
//     the pod's life) lists its TCP listeners; one on an in-pod port whose
//     inode is not one of this pod's listeners is foreign, unless it carries
//     ztunnel's SO_MARK (another ztunnel taking or handing over: setting a
//     mark needs CAP_NET_ADMIN, with which a process could remove the
//     capture rules anyway). Each foreign socket is logged once as an error
//     (port, address, inode, socket uid), and Config.OnForeignListener gets
//     the count per port whenever it changes. The scan stops, and its counts
//     return to 0, when the pod stops being served.
//
// Contract with ZDS: AddPod for a uid already served keeps the running
// proxy when the namespace and pod details are unchanged, and replaces it
// otherwise. DelPod and SnapshotDone (for pods not in the snapshot) close a
// pod's listeners, connections and HBONE pool, and release its netns
// descriptor. Run re-checks open inbound connections on every state change
// and, when it ends, closes every pod. All methods are safe for concurrent
// use.
package inpod
