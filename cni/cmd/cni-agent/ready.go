package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/ambit-mesh/ambit/cni/install"
)

// pluginInstalled reports whether the installer's work is visible: the
// primary CNI config (lexically first .conf/.conflist/.json that is a JSON
// object, as package install picks it) lists ambit-cni, and the binary is
// in the bin dir.
func pluginInstalled(confDir, binDir string) error {
	if _, err := os.Stat(filepath.Join(binDir, install.PluginType)); err != nil {
		return fmt.Errorf("ambit-cni not installed in %s yet: %w", binDir, err)
	}
	ents, err := os.ReadDir(confDir)
	if err != nil {
		return fmt.Errorf("reading CNI conf dir: %w", err)
	}
	var names []string
	for _, e := range ents {
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			if e.Type().IsRegular() {
				names = append(names, e.Name())
			}
		}
	}
	sort.Strings(names)
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(confDir, n))
		if err != nil {
			continue
		}
		var conf struct {
			Plugins []struct {
				Type string `json:"type"`
			} `json:"plugins"`
		}
		if json.Unmarshal(data, &conf) != nil {
			continue // not the primary, as for the installer
		}
		for _, p := range conf.Plugins {
			if p.Type == install.PluginType {
				return nil
			}
		}
		return fmt.Errorf("primary CNI config %s does not list %s yet: waiting for the installer", filepath.Join(confDir, n), install.PluginType)
	}
	return fmt.Errorf("no CNI network config in %s yet: waiting for the primary CNI plugin to write one", confDir)
}
