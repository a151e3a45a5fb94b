package realnode

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// NetworkName is the name of the node's CNI network (the bridge conflist).
const NetworkName = "ambit-node"

// ConflistFile is the conflist's file name in the CNI conf dir.
const ConflistFile = "10-ambit-node.conflist"

// BridgeName is the pods' bridge inside the node's netns.
const BridgeName = "cni0"

// WriteBridgeConflist writes the node's primary CNI network into confDir: a
// bridge (BridgeName, gateway, masquerade) with host-local IPAM over pods,
// keeping its allocations in ipamDir (one file per allocated IP). It is
// what a cluster's primary CNI would put there; the cni-agent appends
// ambit-cni to its plugins.
func WriteBridgeConflist(confDir, ipamDir string, pods netip.Prefix) error {
	gw := pods.Masked().Addr().Next()
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       NetworkName,
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      BridgeName,
			"isGateway":   true,
			"ipMasq":      true,
			"hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"dataDir": ipamDir,
				"ranges":  [][]map[string]string{{{"subnet": pods.String(), "gateway": gw.String()}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
			},
		}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(confDir, ConflistFile), append(b, '\n'), 0o644)
}

// containerdConfig is containerd's config.toml (version 3) for a node: its
// own root, state, sockets and runc root; the CRI plugin with the given CNI
// dirs, the pinned sandbox image, pod netns mounts under its state dir (or
// /var/run/netns),
// oom_score_adj clamped to its own, and the loopback done internally (no
// loopback plugin is needed); plugins that would touch fixed host paths
// disabled.
func containerdConfig(root, state, socket, runcBin, cniBin, cniConf, snapshotter, sandboxImage string, netnsUnderState bool) string {
	q := strconv.Quote
	return strings.Join([]string{
		`version = 3`,
		`root = ` + q(root),
		`state = ` + q(state),
		`disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri",` +
			` "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",` +
			` "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs",` +
			` "io.containerd.tracing.processor.v1.otlp"]`,
		``,
		`[grpc]`,
		`  address = ` + q(socket),
		`[ttrpc]`,
		`  address = ` + q(socket+".ttrpc"),
		`[debug]`,
		`  address = ` + q(filepath.Join(filepath.Dir(socket), "debug.sock")),
		`  level = "info"`,
		``,
		`[plugins.'io.containerd.cri.v1.images']`,
		`  snapshotter = ` + q(snapshotter),
		`[plugins.'io.containerd.cri.v1.images'.pinned_images]`,
		`  sandbox = ` + q(sandboxImage),
		``,
		`[plugins.'io.containerd.cri.v1.runtime']`,
		`  netns_mounts_under_state_dir = ` + strconv.FormatBool(netnsUnderState),
		// The host withholds CAP_SYS_RESOURCE: no process may lower its
		// oom_score_adj, and runc fails a sandbox at -998 ("can't get final
		// child's PID from pipe: EOF"). Clamp to containerd's own value.
		`  restrict_oom_score_adj = true`,
		`  cdi_spec_dirs = []`,
		`[plugins.'io.containerd.cri.v1.runtime'.containerd]`,
		`  default_runtime_name = "runc"`,
		`[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]`,
		`  runtime_type = "io.containerd.runc.v2"`,
		`[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]`,
		`  BinaryName = ` + q(runcBin),
		`  Root = ` + q(filepath.Join(state, "runc")),
		`  SystemdCgroup = false`,
		`[plugins.'io.containerd.cri.v1.runtime'.cni]`,
		`  bin_dirs = [` + q(cniBin) + `]`,
		`  conf_dir = ` + q(cniConf),
		`  use_internal_loopback = true`,
		``,
		`[plugins.'io.containerd.grpc.v1.cri']`,
		`  stream_server_address = "127.0.0.1"`,
		`  stream_server_port = "0"`,
		``,
	}, "\n")
}

// kubeletParams are what varies in a node's KubeletConfiguration.
type kubeletParams struct {
	NodeIP         netip.Addr
	ClientCAFile   string
	CgroupRoot     string // "/ambtn/<node>"
	RuntimeSocket  string
	PodLogsDir     string
	ResolvConf     string
	HealthzPort    int
	ClusterDomain  string
	ClusterDNS     []string
	ExtraFeatureGs map[string]bool
}

// kubeletConfig is the KubeletConfiguration of a node, as JSON (see doc.go
// for why each field is set). The serving certificate is self-signed by the
// kubelet in its --cert-dir.
func kubeletConfig(p kubeletParams) ([]byte, error) {
	cfg := map[string]any{
		"apiVersion":         "kubelet.config.k8s.io/v1beta1",
		"kind":               "KubeletConfiguration",
		"address":            p.NodeIP.String(),
		"port":               10250,
		"readOnlyPort":       0,
		"healthzPort":        p.HealthzPort,
		"healthzBindAddress": "127.0.0.1",
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true},
			"x509":      map[string]any{"clientCAFile": p.ClientCAFile},
		},
		"authorization":            map[string]any{"mode": "Webhook"},
		"containerRuntimeEndpoint": "unix://" + p.RuntimeSocket,
		"failCgroupV1":             false,
		"cgroupDriver":             "cgroupfs",
		"cgroupRoot":               p.CgroupRoot,
		"cgroupsPerQOS":            true,
		"enforceNodeAllocatable":   []string{"pods"},
		"failSwapOn":               false,
		"podLogsDir":               p.PodLogsDir,
		"resolvConf":               p.ResolvConf,
		"clusterDomain":            p.ClusterDomain,
		"registerNode":             true,
		// A busy CI disk must not evict the test's pods or their images.
		"evictionHard": map[string]string{
			"memory.available": "50Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
			"imagefs.available": "1%", "imagefs.inodesFree": "1%",
		},
		"mergeDefaultEvictionSettings": false,
		"imageGCHighThresholdPercent":  100,
		"imageGCLowThresholdPercent":   99,
		"serializeImagePulls":          false,
		"nodeStatusUpdateFrequency":    "2s",
		"nodeStatusReportFrequency":    "10s",
		"syncFrequency":                "10s",
		"fileCheckFrequency":           "5s",
		"maxPods":                      110,
		"oomScoreAdj":                  0, // not lower: no CAP_SYS_RESOURCE here
		"shutdownGracePeriod":          "0s",
		"logging":                      map[string]any{"format": "text", "verbosity": 1},
	}
	if len(p.ClusterDNS) > 0 {
		cfg["clusterDNS"] = p.ClusterDNS
	}
	if len(p.ExtraFeatureGs) > 0 {
		cfg["featureGates"] = p.ExtraFeatureGs
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding KubeletConfiguration: %w", err)
	}
	return b, nil
}
