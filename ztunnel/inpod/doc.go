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
// Contract with ZDS: AddPod for a uid already served keeps the running
// proxy when the namespace and pod details are unchanged, and replaces it
// otherwise. DelPod and SnapshotDone (for pods not in the snapshot) close a
// pod's listeners, connections and HBONE pool, and release its netns
// descriptor. Run re-checks open inbound connections on every state change
// and, when it ends, closes every pod. All methods are safe for concurrent
// use.
package inpod
