// Package install puts ambit-cni on a node: it copies the plugin binary into
// the CNI bin dir and appends the plugin to the primary CNI network config,
// then keeps both in place while other CNI plugins rewrite their files.
//
// The primary config is the lexically first *.conf, *.conflist or *.json file
// in the conf dir that parses as a JSON object, the file kubelet and
// containerd pick. A single-plugin .conf (or .json) is converted into a
// .conflist (cniVersion and name stay at the top, the rest becomes the first
// plugin) and the original file is removed; the ambit-cni entry remembers the
// original name so Uninstall can restore it. Every other field and plugin
// entry is preserved as equivalent JSON (unknown fields, number literals and
// key order inside other plugins' entries are kept); output is indented with
// two spaces and top-level keys sorted.
//
// Every write is atomic (temp file in the same dir, fsync, rename) and
// Reconcile is level-triggered and idempotent: it computes the desired files
// and writes only those that differ semantically, so a config that is already
// right is never rewritten. Run reconciles at start, on every change in the
// conf dir (and bin dir), and periodically. Reconcile, Uninstall and Run must
// not run concurrently on the same Installer; Run serialises its own calls.
package install
