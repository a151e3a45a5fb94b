// Package netns opens, creates, deletes and enters Linux network namespaces,
// and creates sockets inside them.
//
// A namespace is handled as an *os.File open on it (a /var/run/netns/<name>
// bind mount, /proc/<pid>/ns/net, or a descriptor received over ZDS). The
// caller owns the file and closes it.
//
// Do runs a function on a locked OS thread switched into a namespace and
// switches it back afterwards; a thread that cannot be switched back is never
// returned to the Go scheduler. Sockets created inside Do stay in that
// namespace after the thread switches back, which is how ztunnel opens its
// in-pod listeners (see Sockets).
//
// Socket and Sockets.Dial (TCP) create sockets through a small pool of
// worker goroutines, at most min(4, GOMAXPROCS), each locked to its thread
// for life: a worker enters the namespace, calls socket(2) and switches
// back, which never blocks. Connecting happens on the caller's goroutine in
// Go's poller, so any number of dials in progress, to reachable or
// unreachable addresses, cost no OS threads beyond the pool's. Do around a
// blocking call instead holds one thread per call until it returns, and Go
// never frees idle threads: use Do only for calls that do not block.
//
// Do uses setns(2) directly and never remounts /sys, unlike `ip netns exec`:
// BPF pinning and sysfs reads done by the caller see the host's mounts.
//
// Everything here needs Linux and CAP_SYS_ADMIN (Create, Delete, Do) or
// CAP_NET_ADMIN in the target namespace (Do's callers).
package netns
