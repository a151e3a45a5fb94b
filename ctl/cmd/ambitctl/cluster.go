package main

import "github.com/spf13/cobra"

func newClusterCmds(a *app) []*cobra.Command { return nil }
