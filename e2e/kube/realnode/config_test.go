package realnode

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/BurntSushi/toml"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
)

// The KubeletConfiguration names only fields kubelet knows, with the values
// the node depends on.
func TestKubeletConfigFields(t *testing.T) {
	b, err := kubeletConfig(kubeletParams{
		NodeIP: netip.MustParseAddr("172.28.0.2"), ClientCAFile: "/ca.crt", CgroupRoot: "/ambtn/n",
		RuntimeSocket: "/run/ambtn/n/containerd.sock", PodLogsDir: "/logs", ResolvConf: "/etc/resolv.conf",
		HealthzPort: 10248, ClusterDomain: "cluster.local",
	})
	if err != nil {
		t.Fatal(err)
	}
	var cfg kubeletv1beta1.KubeletConfiguration
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("kubelet would not read its configuration: %v\n%s", err, b)
	}
	if cfg.FailCgroupV1 == nil || *cfg.FailCgroupV1 || cfg.CgroupDriver != "cgroupfs" || cfg.CgroupRoot != "/ambtn/n" {
		t.Errorf("cgroup settings: failCgroupV1 %v, driver %q, root %q", cfg.FailCgroupV1, cfg.CgroupDriver, cfg.CgroupRoot)
	}
	if cfg.Authorization.Mode != kubeletv1beta1.KubeletAuthorizationModeWebhook || cfg.Authentication.X509.ClientCAFile != "/ca.crt" {
		t.Errorf("authn/authz: %+v %+v", cfg.Authentication, cfg.Authorization)
	}
	if cfg.ContainerRuntimeEndpoint != "unix:///run/ambtn/n/containerd.sock" || cfg.OOMScoreAdj == nil || *cfg.OOMScoreAdj != 0 {
		t.Errorf("runtime endpoint %q, oomScoreAdj %v", cfg.ContainerRuntimeEndpoint, cfg.OOMScoreAdj)
	}
}

// containerd's configuration is valid TOML with the node's own places and
// the workarounds this host needs.
func TestContainerdConfig(t *testing.T) {
	s := containerdConfig("/var/lib/ambtn/n/containerd", "/run/ambtn/n/containerd", "/run/ambtn/n/containerd.sock",
		"/usr/sbin/runc", "/cni/bin", "/cni/net.d", "overlayfs", PauseImage, true)
	var cfg struct {
		Version int
		Root    string
		State   string
		GRPC    struct{ Address string } `toml:"grpc"`
		Plugins map[string]map[string]any
	}
	if _, err := toml.Decode(s, &cfg); err != nil {
		t.Fatalf("containerd config is not TOML: %v\n%s", err, s)
	}
	if cfg.Version != 3 || cfg.Root != "/var/lib/ambtn/n/containerd" || cfg.GRPC.Address != "/run/ambtn/n/containerd.sock" {
		t.Errorf("version %d, root %q, address %q", cfg.Version, cfg.Root, cfg.GRPC.Address)
	}
	rt := cfg.Plugins["io.containerd.cri.v1.runtime"]
	if rt["restrict_oom_score_adj"] != true || rt["netns_mounts_under_state_dir"] != true {
		t.Errorf("runtime plugin: %v", rt)
	}
	pinned, _ := cfg.Plugins["io.containerd.cri.v1.images"]["pinned_images"].(map[string]any)
	if pinned["sandbox"] != PauseImage {
		t.Errorf("sandbox image %v, want %s", pinned["sandbox"], PauseImage)
	}
}

func TestWriteBridgeConflist(t *testing.T) {
	dir := t.TempDir()
	if err := WriteBridgeConflist(dir, "/ipam", PodCIDR(3)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, ConflistFile))
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Name    string
		Plugins []struct {
			Type string
			IPAM struct {
				DataDir string `json:"dataDir"`
				Ranges  [][]struct{ Subnet, Gateway string }
			}
		}
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	if conf.Name != NetworkName || len(conf.Plugins) != 1 || conf.Plugins[0].Type != "bridge" {
		t.Fatalf("conflist %s", b)
	}
	ipam := conf.Plugins[0].IPAM
	if ipam.DataDir != "/ipam" || ipam.Ranges[0][0].Subnet != "10.247.3.0/24" || ipam.Ranges[0][0].Gateway != "10.247.3.1" {
		t.Errorf("ipam %+v", ipam)
	}
}
