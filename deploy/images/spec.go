package images

import (
	"fmt"
	"io/fs"
	"path"
)

// Module is the Go module the images' binaries come from.
const Module = "github.com/ambit-mesh/ambit"

// Spec is one image: the binaries in its layer and its runtime config.
type Spec struct {
	// Name is the image's name, the last element of its repository
	// (<hub>/<Name>:<version>) and of its tarball (<Name>.tar).
	Name string
	// Description is the org.opencontainers.image.description label.
	Description string
	// Pending, when set, says why the image cannot be built yet; Build
	// returns an error wrapping ErrPending and the CLI skips the image.
	Pending string
	// Binaries are compiled into the layer; the first is the entrypoint.
	Binaries []Binary
	// Dirs are extra directories in the layer (the binaries' parents are
	// added without being listed).
	Dirs []Dir
	// User is the image's default user, numeric "uid:gid".
	User string
	// Env is the image's environment, KEY=value.
	Env []string
	// Cmd is the default arguments after the entrypoint.
	Cmd []string
}

// Binary is a Go main package compiled into the image.
type Binary struct {
	// Package is the main package's import path.
	Package string
	// Path is the binary's absolute path in the image; mode 0755.
	Path string
}

// Dir is a directory in the image.
type Dir struct {
	Path string
	Mode fs.FileMode // permission and sticky bits, e.g. 0o777|fs.ModeSticky for /tmp
}

// tmp is a world-writable /tmp, for libraries that assume one.
var tmp = Dir{Path: "/tmp", Mode: 0o777 | fs.ModeSticky}

const defaultPath = "PATH=/usr/local/bin:/usr/bin:/bin"

// The images, by component.
var (
	Istiod = Spec{
		Name:        "istiod",
		Description: "Ambit control plane: ambient index, CA, xDS for ztunnel and waypoints",
		Binaries:    []Binary{{Package: Module + "/istiod/cmd/istiod", Path: "/usr/local/bin/istiod"}},
		Dirs:        []Dir{tmp},
		User:        "1337:1337",
		Env:         []string{defaultPath},
	}
	// Ztunnel runs as root in its pod with NET_ADMIN, SYS_ADMIN and NET_RAW,
	// as Istio's ztunnel image does (its image sets no user).
	Ztunnel = Spec{
		Name:        "ztunnel",
		Description: "Ambit node proxy: HBONE mTLS tunnels for the pods captured on its node",
		Binaries:    []Binary{{Package: Module + "/ztunnel/cmd/ztunnel", Path: "/usr/local/bin/ztunnel"}},
		Dirs:        []Dir{tmp},
		User:        "0:0",
		Env:         []string{defaultPath},
	}
	// CNIAgent holds ambit-cni next to the agent, where the agent's
	// --plugin-binary default and install.DefaultPluginBinary look.
	CNIAgent = Spec{
		Name:        "cni-agent",
		Description: "Ambit node agent: installs the ambit-cni plugin and captures enrolled pods",
		Binaries: []Binary{
			{Package: Module + "/cni/cmd/cni-agent", Path: "/opt/ambit/bin/cni-agent"},
			{Package: Module + "/cni/cmd/ambit-cni", Path: "/opt/ambit/bin/ambit-cni"},
		},
		Dirs: []Dir{tmp},
		User: "0:0",
		Env:  []string{"PATH=/opt/ambit/bin:/usr/local/bin:/usr/bin:/bin"},
	}
	Ambitctl = Spec{
		Name:        "ambitctl",
		Description: "Ambit CLI: install, enroll, inspect",
		Binaries:    []Binary{{Package: Module + "/ctl/cmd/ambitctl", Path: "/usr/local/bin/ambitctl"}},
		Dirs:        []Dir{tmp},
		User:        "1000:1000",
		Env:         []string{defaultPath},
	}
	// Waypoint: when the binary exists, replace Pending with
	// Binaries: []Binary{{Package: Module + "/waypoint/cmd/waypoint", Path: "/usr/local/bin/waypoint"}},
	Waypoint = Spec{
		Name:        "waypoint",
		Description: "Ambit waypoint: per-namespace L7 proxy",
		Pending:     "no waypoint binary yet (expected at " + Module + "/waypoint/cmd/waypoint)",
		Dirs:        []Dir{tmp},
		User:        "1337:1337",
		Env:         []string{defaultPath},
	}
	// Pause is the pod sandbox image for the test node's containerd (its
	// sandbox_image), as Kubernetes' pause: /pause as 65535:65535.
	Pause = Spec{
		Name:        "pause",
		Description: "Pod sandbox: sleeps until SIGTERM or SIGINT, reaps children",
		Binaries:    []Binary{{Package: Module + "/deploy/images/pause", Path: "/pause"}},
		User:        "65535:65535",
	}
)

// Specs lists every image, in build order.
func Specs() []Spec {
	return []Spec{Istiod, Ztunnel, CNIAgent, Ambitctl, Waypoint, Pause}
}

// Lookup returns the spec named name.
func Lookup(name string) (Spec, error) {
	var names []string
	for _, s := range Specs() {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return Spec{}, fmt.Errorf("unknown image %q: use one of %v", name, names)
}

// validate checks the fields Build relies on; errors name the field.
func (s Spec) validate() error {
	if s.Name == "" {
		return fmt.Errorf("image spec: Name is empty")
	}
	if len(s.Binaries) == 0 {
		return fmt.Errorf("image %s: Binaries is empty: an image needs at least its entrypoint binary", s.Name)
	}
	seen := map[string]bool{}
	check := func(field, p string) error {
		if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
			return fmt.Errorf("image %s: %s %q must be a clean absolute path below /", s.Name, field, p)
		}
		if seen[p] {
			return fmt.Errorf("image %s: %s %q appears twice", s.Name, field, p)
		}
		seen[p] = true
		return nil
	}
	for _, b := range s.Binaries {
		if b.Package == "" {
			return fmt.Errorf("image %s: binary %q has no Package", s.Name, b.Path)
		}
		if err := check("binary Path", b.Path); err != nil {
			return err
		}
	}
	for _, d := range s.Dirs {
		if err := check("Dir Path", d.Path); err != nil {
			return err
		}
		if d.Mode&^(fs.ModePerm|fs.ModeSticky|fs.ModeSetuid|fs.ModeSetgid) != 0 {
			return fmt.Errorf("image %s: Dir %q Mode %v: only permission, sticky, setuid and setgid bits", s.Name, d.Path, d.Mode)
		}
	}
	return nil
}
