package main

import "github.com/spf13/cobra"

// newInstallCmds are install, upgrade and uninstall (after the chart
// package lands).
func newInstallCmds(a *app, k *kubeFlags) []*cobra.Command { return nil }
