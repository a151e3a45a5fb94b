package install

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"
)

// Environment variables the cni-agent reads to configure the installer.
const (
	EnvConfDir      = "AMBIT_CNI_CONF_DIR"
	EnvBinDir       = "AMBIT_CNI_BIN_DIR"
	EnvPluginBinary = "AMBIT_CNI_PLUGIN_BINARY"
	EnvAgentSocket  = "AMBIT_CNI_AGENT_SOCKET"
	EnvLogLevel     = "AMBIT_CNI_PLUGIN_LOG_LEVEL"
	EnvLogFile      = "AMBIT_CNI_PLUGIN_LOG_FILE"
	EnvTimeout      = "AMBIT_CNI_PLUGIN_TIMEOUT"
)

// Defaults, as on a kubeadm/containerd node and in the cni-agent image.
const (
	DefaultConfDir        = "/etc/cni/net.d"
	DefaultBinDir         = "/opt/cni/bin"
	DefaultPluginBinary   = "/opt/ambit/bin/ambit-cni"
	DefaultResyncInterval = time.Minute
)

// PluginType is the plugin's "type" in the conflist and its binary name.
const PluginType = "ambit-cni"

// markerKey is set in the ambit-cni entry when the installer turned a
// single-plugin file into a conflist; its value is the original file name.
const markerKey = "ambit_converted_from"

// PluginEntry is ambit-cni's own config in the conflist; the field names are
// those package plugin parses. Empty fields are omitted (plugin defaults).
type PluginEntry struct {
	AgentSocket string `json:"agent_socket,omitempty"`
	LogLevel    string `json:"log_level,omitempty"`
	LogFile     string `json:"log_file,omitempty"`
	Timeout     string `json:"timeout,omitempty"`
}

// Config configures an Installer.
type Config struct {
	// ConfDir is the CNI network config dir.
	ConfDir string
	// BinDir is the CNI plugin binary dir.
	BinDir string
	// PluginBinary is the ambit-cni binary to copy into BinDir; empty skips
	// the binary.
	PluginBinary string
	// Entry is written into the primary conflist.
	Entry PluginEntry
	// ResyncInterval is how often Run reconciles without an event; 0 means
	// DefaultResyncInterval.
	ResyncInterval time.Duration
	// Logger receives progress; nil discards.
	Logger *slog.Logger
}

// ConfigFromEnv reads a Config from the Env* variables, with defaults.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	get := func(k, def string) string {
		if v := strings.TrimSpace(getenv(k)); v != "" {
			return v
		}
		return def
	}
	c := Config{
		ConfDir:      get(EnvConfDir, DefaultConfDir),
		BinDir:       get(EnvBinDir, DefaultBinDir),
		PluginBinary: get(EnvPluginBinary, DefaultPluginBinary),
		Entry: PluginEntry{
			AgentSocket: get(EnvAgentSocket, ""),
			LogLevel:    get(EnvLogLevel, ""),
			LogFile:     get(EnvLogFile, ""),
			Timeout:     get(EnvTimeout, ""),
		},
	}
	return c, c.validate()
}

func (c *Config) validate() error {
	for _, p := range []struct{ env, v string }{
		{EnvConfDir, c.ConfDir}, {EnvBinDir, c.BinDir}, {EnvPluginBinary, c.PluginBinary},
		{EnvAgentSocket, c.Entry.AgentSocket}, {EnvLogFile, c.Entry.LogFile},
	} {
		if p.v != "" && !filepath.IsAbs(p.v) {
			return fmt.Errorf("%s=%q: must be an absolute path", p.env, p.v)
		}
	}
	if c.ConfDir == "" {
		return fmt.Errorf("install: no CNI conf dir: set %s", EnvConfDir)
	}
	if c.PluginBinary != "" && c.BinDir == "" {
		return fmt.Errorf("install: no CNI bin dir to copy %s into: set %s", c.PluginBinary, EnvBinDir)
	}
	if c.Entry.Timeout != "" {
		if d, err := time.ParseDuration(c.Entry.Timeout); err != nil || d <= 0 {
			return fmt.Errorf("%s=%q: want a positive duration such as 30s", EnvTimeout, c.Entry.Timeout)
		}
	}
	return nil
}
