// Package images builds Ambit's container images without a container engine:
// one OCI image per component, made of static Go binaries on an empty base,
// written as a docker-archive tarball that `docker load` and
// `ctr -n k8s.io images import` both accept.
//
// # Contents
//
// An image is one layer holding the Spec's binaries, the directories above
// them and the Spec's extra directories (such as /tmp), and nothing else: no
// shell, no libc, no /etc/passwd (users are numeric) and no CA bundle (Ambit
// trusts only its own mesh CA). The binaries are compiled with CGO_ENABLED=0,
// GOOS=linux, -trimpath, -buildvcs=false and
// -ldflags "-s -w -buildid= -X github.com/ambit-mesh/ambit/pkg/version.Version=<v>".
//
// The specs, by image name (Specs lists them in order):
//
//	istiod     /usr/local/bin/istiod                        user 1337:1337
//	ztunnel    /usr/local/bin/ztunnel                       user 0:0 (the pod adds NET_ADMIN, SYS_ADMIN, NET_RAW)
//	cni-agent  /opt/ambit/bin/cni-agent, /opt/ambit/bin/ambit-cni   user 0:0
//	ambitctl   /usr/local/bin/ambitctl                      user 1000:1000
//	waypoint   pending: no waypoint binary yet
//	pause      /pause                                       user 65535:65535
//
// cni-agent's image puts ambit-cni next to the agent: both the agent's
// --plugin-binary default (next to its executable) and
// install.DefaultPluginBinary name /opt/ambit/bin/ambit-cni. The image has no
// iptables binary, so the agent captures with nftables (capture mode auto or
// nftables); iptables mode needs an image with the iptables package.
//
// pause is Kubernetes' sandbox image for the test node's containerd: a Go
// program (package pause below this one) that sleeps until SIGTERM or SIGINT,
// exits 0 on either, and reaps children when it is a PID namespace's init.
//
// # Reproducibility
//
// The same source tree, Go toolchain, Options and Spec give the same image
// digest: the binaries carry no build ID, path or VCS stamp; the layer's tar
// entries are sorted, owned by 0:0 with fixed modes, and dated Options.Epoch;
// the config's created time, the layer's history and the
// org.opencontainers.image.created label are Options.Epoch too (the Unix epoch
// unless set, e.g. from SOURCE_DATE_EPOCH by EpochFromEnv).
//
// # Seams
//
// Build (or a Builder, which compiles each package once for several specs)
// returns a v1.Image; WriteTarball writes it under a tag made by Tag
// (<hub>/<name>:<version>, hub DefaultHub unless set). Digest is the
// manifest digest go-containerregistry computes; ID is the config digest,
// the image ID `docker images` and `crictl images` show after an import.
// cmd/ambit-images (`make images`) builds every spec into bin/images:
//
//	make images [VERSION=…] [HUB=…] [SOURCE_DATE_EPOCH=…]
//	ctr -n k8s.io images import bin/images/istiod.tar   # or: docker load -i bin/images/istiod.tar
//
// containerd's importer writes its own manifest for a docker archive, so
// after an import the manifest digest differs from Digest while the image
// ID (config digest) is the same.
package images
