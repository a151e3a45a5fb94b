package kube

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeNode lays out a node's files under a temp root.
func fakeNode(t *testing.T, files map[string]string, tools ...string) Node {
	t.Helper()
	root := t.TempDir()
	for p, body := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	has := func(name string) bool {
		for _, tool := range tools {
			if tool == name {
				return true
			}
		}
		return false
	}
	return Node{
		Root: root,
		LookPath: func(name string) (string, error) {
			if has(name) {
				return "/usr/sbin/" + name, nil
			}
			return "", errors.New("not found")
		},
		Run: func(name string, _ ...string) error {
			if has(name) {
				return nil
			}
			return errors.New("not found")
		},
	}
}

func statusOf(r Report, name string) Status {
	for _, c := range r {
		if c.Name == name {
			return c.Status
		}
	}
	return ""
}

func TestNodeChecks(t *testing.T) {
	full := map[string]string{
		"/etc/cni/net.d/10-flannel.conflist": `{"plugins":[{"type":"flannel"}]}`,
		"/sys/module/nf_tables/refcnt":       "1",
		"/sys/kernel/btf/vmlinux":            "",
		"/proc/mounts":                       "bpf /sys/fs/bpf bpf rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n",
	}
	r := NodeChecks(fakeNode(t, full, "iptables"), "/etc/cni/net.d", "auto")
	for _, name := range []string{"cni-conf-dir", "capture-nftables", "capture-iptables", "capture-ebpf"} {
		if s := statusOf(r, name); s != OK {
			t.Errorf("full node: %s = %s", name, s)
		}
	}
	if r.Failed() {
		t.Error("full node failed")
	}

	// A bare node: no CNI config, no modules, no tools, cgroup v1.
	bare := fakeNode(t, map[string]string{"/proc/mounts": "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"})
	r = NodeChecks(bare, "/etc/cni/net.d", "auto")
	if statusOf(r, "cni-conf-dir") != Warn || !r.Failed() {
		t.Errorf("bare node: %+v", r)
	}
	var b bytes.Buffer
	if err := r.Write(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"FAIL  capture-ebpf", "a cgroup v2 mount", "-> modprobe nf_tables"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}

	// nftables only: auto passes, ebpf asked for fails.
	nft := fakeNode(t, map[string]string{"/etc/cni/net.d/05-cilium.conf": "{}", "/sys/module/nf_tables/refcnt": "1", "/proc/mounts": ""})
	if r := NodeChecks(nft, "/etc/cni/net.d", "auto"); r.Failed() {
		t.Errorf("nftables node with auto: %+v", r)
	}
	if r := NodeChecks(nft, "/etc/cni/net.d", "ebpf"); statusOf(r, "capture-ebpf") != Fail || statusOf(r, "capture-nftables") != OK {
		t.Errorf("nftables node with ebpf: %+v", r)
	}

	// Istio's CNI in the primary config.
	istio := fakeNode(t, map[string]string{"/etc/cni/net.d/10-calico.conflist": `{"plugins":[{"type":"calico"},{"type":"istio-cni"}]}`})
	if s := statusOf(NodeChecks(istio, "/etc/cni/net.d", "auto"), "cni-conf-dir"); s != Warn {
		t.Errorf("istio-cni conflist: %s", s)
	}
}

func TestImageTag(t *testing.T) {
	for img, want := range map[string]string{
		"ambit/istiod:0.2.0":                  "0.2.0",
		"registry.local:5000/ambit/ztunnel":   "unknown",
		"registry.local:5000/ambit/ztunnel:1": "1",
		"ambit/ztunnel@sha256:abc":            "sha256:abc",
		"":                                    "unknown",
	} {
		if got := imageTag(img); got != want {
			t.Errorf("imageTag(%q) = %q, want %q", img, got, want)
		}
	}
}
