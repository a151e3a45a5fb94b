package local

import "path/filepath"

// DefaultStateDir is where local mode keeps its state (flag --state-dir,
// env AMBIT_LOCAL_DIR).
const DefaultStateDir = "/var/run/ambit/local"

// Paths is the layout of a state dir. Every file the node agents, ztunnels
// and istiod read lives under Dir.
type Paths struct{ Dir string }

func (p Paths) join(elem ...string) string {
	return filepath.Join(append([]string{p.Dir}, elem...)...)
}

// Topology is the applied topology.
func (p Paths) Topology() string { return p.join("topology.yaml") }

// Cluster is the cluster state file (pkg/localcluster) the agents watch.
func (p Paths) Cluster() string { return p.join("cluster.json") }

// ConfigDir is istiod's --config-dir: the cluster as Kubernetes objects
// (ConfigFiles), one file per kind.
func (p Paths) ConfigDir() string { return p.join("config") }

// Redirection records the uids of the pods ambitctl marked as captured
// (annotation ambient.istio.io/redirection), as the node agent does in
// Kubernetes.
func (p Paths) Redirection() string { return p.join("redirection.json") }

// IstiodDir keeps istiod's CA state.
func (p Paths) IstiodDir() string { return p.join("istiod") }

// RootCert is the trust bundle istiod writes at start.
func (p Paths) RootCert() string { return p.join("root-cert.pem") }

// Tokens is istiod's --token-file.
func (p Paths) Tokens() string { return p.join("tokens.yaml") }

// NodeDir holds one node's sockets, token and CNI config.
func (p Paths) NodeDir(node string) string { return p.join("nodes", node) }

// NodeToken is the bearer token of the node's ztunnel.
func (p Paths) NodeToken(node string) string { return p.join("nodes", node, "token") }

// AgentSocket is the node's cni-agent API socket.
func (p Paths) AgentSocket(node string) string { return p.join("nodes", node, "cni-agent.sock") }

// ZDSSocket is the node's ZDS socket (cni-agent → ztunnel).
func (p Paths) ZDSSocket(node string) string { return p.join("nodes", node, "ztunnel.sock") }

// NetD is the node's CNI conf dir.
func (p Paths) NetD(node string) string { return p.join("nodes", node, "net.d") }

// Conflist is the node's network config (bridge + host-local; the agent
// appends ambit-cni).
func (p Paths) Conflist(node string) string { return filepath.Join(p.NetD(node), ConflistName) }

// IPAMDir is host-local's data dir for the node.
func (p Paths) IPAMDir(node string) string { return p.join("nodes", node, "ipam") }

// CNIBin holds the CNI plugin binaries.
func (p Paths) CNIBin() string { return p.join("cni", "bin") }

// Logs holds one log file per process.
func (p Paths) Logs() string { return p.join("logs") }

// Log is the log file of a process.
func (p Paths) Log(process string) string { return p.join("logs", process+".log") }

// Procs records every process started (procs.json).
func (p Paths) Procs() string { return p.join("procs.json") }

// Lock serialises the commands that change the mesh. It lives beside the
// state dir so that down can remove the dir while holding it.
func (p Paths) Lock() string { return filepath.Clean(p.Dir) + ".lock" }
