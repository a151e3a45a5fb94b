// Command ambit-cni is the chained CNI plugin that enrolls pods in the Ambit
// mesh through the node's cni-agent. The container runtime runs it; its
// config comes from the CNI conflist (see package plugin for the fields).
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/ambit-mesh/ambit/cni/plugin"
)

func main() {
	skel.PluginMainFuncs(plugin.New().Funcs(), plugin.Versions, plugin.About)
}
