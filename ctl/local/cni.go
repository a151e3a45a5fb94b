package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/ambit-mesh/ambit/pkg/netns"
)

// CNIPluginsVersion is the version of github.com/containernetworking/plugins
// pinned in go.mod; bridge and host-local are built from it.
const CNIPluginsVersion = "v1.9.1"

// cniPlugins are the plugins of the node conflist besides ambit-cni, by
// binary name and Go package.
var cniPlugins = []struct{ name, pkg string }{
	{"bridge", "github.com/containernetworking/plugins/plugins/main/bridge"},
	{"host-local", "github.com/containernetworking/plugins/plugins/ipam/host-local"},
}

// AmbitCNIType is the plugin type the cni-agent appends to the conflist.
const AmbitCNIType = "ambit-cni"

// PluginCacheDir is where bridge and host-local are built once per version:
// $HOME/.cache/ambit/cni-plugins-<version>.
func PluginCacheDir() string {
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "ambit", "cni-plugins-"+CNIPluginsVersion)
}

func hasPlugins(dir string) bool {
	for _, p := range cniPlugins {
		if fi, err := os.Stat(filepath.Join(dir, p.name)); err != nil || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// InstallPlugins copies bridge and host-local into dst: from the first of
// dirs that has both, else from the cache dir, building them there with
// `go install <pkg>@CNIPluginsVersion` when it lacks them.
func InstallPlugins(ctx context.Context, dst string, dirs []string, progress io.Writer) error {
	src := ""
	for _, d := range append(dirs, PluginCacheDir()) {
		if d != "" && hasPlugins(d) {
			src = d
			break
		}
	}
	if src == "" {
		src = PluginCacheDir()
		fmt.Fprintf(progress, "building CNI plugins bridge and host-local %s into %s (once)\n", CNIPluginsVersion, src)
		if err := buildPlugins(ctx, src); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	for _, p := range cniPlugins {
		if err := copyFile(filepath.Join(src, p.name), filepath.Join(dst, p.name), 0o755); err != nil {
			return fmt.Errorf("installing CNI plugin %s: %w", p.name, err)
		}
	}
	return nil
}

func buildPlugins(ctx context.Context, dir string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("CNI plugins bridge and host-local are not in %s and no go toolchain is in PATH to build them: run `make build` or put them there", dir)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".cni-plugins-*")
	if err != nil {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return err
		}
		if tmp, err = os.MkdirTemp(filepath.Dir(dir), ".cni-plugins-*"); err != nil {
			return err
		}
	}
	defer os.RemoveAll(tmp)
	args := []string{"install"}
	for _, p := range cniPlugins {
		args = append(args, p.pkg+"@"+CNIPluginsVersion)
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=-mod=mod", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building CNI plugins (go %v): %w\n%s", args, err, out)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, p := range cniPlugins {
		if err := os.Rename(filepath.Join(tmp, p.name), filepath.Join(dir, p.name)); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// Conflist is node i's network config: bridge cni0 (gateway 10.244.i.1)
// with host-local over 10.244.i.0/24, its data under ipamDir.
func Conflist(i int, ipamDir string) []byte {
	return NodeConflist(NetworkName, PodCIDR(i), ipamDir)
}

// NodeConflist is a node's network config called network: bridge cni0
// (the gateway, podCIDR's first address) with host-local over podCIDR, its
// data under ipamDir. The cni-agent appends ambit-cni to it.
func NodeConflist(network string, podCIDR netip.Prefix, ipamDir string) []byte {
	doc := map[string]any{
		"cniVersion": CNIVersion,
		"name":       network,
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      PodBridge,
			"isGateway":   true,
			"ipMasq":      false,
			"hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": podCIDR.Masked().String(), "gateway": podCIDR.Masked().Addr().Next().String()}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": ipamDir,
			},
		}},
	}
	b, _ := json.MarshalIndent(doc, "", "  ")
	return append(b, '\n')
}

// loadChain returns the node's conflist once the cni-agent has appended
// ambit-cni to it, polling until ctx ends.
func loadChain(ctx context.Context, netD string) (*libcni.NetworkConfigList, error) {
	return LoadChain(ctx, netD, NetworkName)
}

// LoadChain returns the conflist of network in netD once the cni-agent has
// appended ambit-cni to it, polling until ctx ends.
func LoadChain(ctx context.Context, netD, network string) (*libcni.NetworkConfigList, error) {
	var last error
	for {
		list, err := libcni.LoadNetworkConf(netD, network)
		if err == nil {
			n := len(list.Plugins)
			if n > 0 && list.Plugins[n-1].Network.Type == AmbitCNIType {
				return list, nil
			}
			err = fmt.Errorf("%s does not end with %s yet", netD, AmbitCNIType)
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the cni-agent to add %s to the node's CNI config: %w", AmbitCNIType, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// CNIPod is what a CNI invocation needs to know about a pod: the
// runtime's CNI_ARGS (K8S_POD_*), CNI_CONTAINERID (the UID) and CNI_NETNS.
type CNIPod struct {
	Namespace, Name, UID, Netns string
}

func runtimeConf(p CNIPod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.UID,
		NetNS:       p.Netns,
		IfName:      PodIfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.UID},
			{"K8S_POD_UID", p.UID},
		},
	}
}

// CNIAdd runs the chain's ADD with the plugins in the node's network
// namespace (the bridge plugin creates cni0 in the caller's namespace) and
// returns the pod's IPs.
func CNIAdd(ctx context.Context, nodeNS *os.File, cfg *libcni.CNIConfig, list *libcni.NetworkConfigList, p CNIPod) ([]netip.Addr, error) {
	var res *current.Result
	err := netns.Do(nodeNS, func() error {
		r, err := cfg.AddNetworkList(ctx, list, runtimeConf(p))
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			ips = append(ips, a.Unmap())
		}
	}
	if len(ips) == 0 {
		return nil, errors.New("the CNI result has no IP address")
	}
	return ips, nil
}

// CNIDel runs the chain's DEL in the node's network namespace.
func CNIDel(ctx context.Context, nodeNS *os.File, cfg *libcni.CNIConfig, list *libcni.NetworkConfigList, p CNIPod) error {
	return netns.Do(nodeNS, func() error { return cfg.DelNetworkList(ctx, list, runtimeConf(p)) })
}
