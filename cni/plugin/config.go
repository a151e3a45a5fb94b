package plugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ambit-mesh/ambit/cni/agentapi"
)

// PluginType is the plugin's binary name and its "type" in a conflist.
const PluginType = "ambit-cni"

// Keys of the plugin's own fields in its network config.
const (
	KeyAgentSocket = "agent_socket"
	KeyLogLevel    = "log_level"
	KeyLogFile     = "log_file"
	KeyTimeout     = "timeout"
)

// DefaultTimeout bounds how long ADD waits for the agent's verdict.
const DefaultTimeout = 30 * time.Second

// Versions are the CNI spec versions the plugin speaks.
var Versions = version.PluginSupports("1.0.0", "1.1.0")

// Config is the plugin's network config as read from stdin.
type Config struct {
	types.PluginConf

	// AgentSocket is the agent's unix socket (agent_socket), absolute.
	AgentSocket string
	// LogLevel is one of debug, info, warn, error (log_level).
	LogLevel slog.Level
	// LogFile, when set, receives the plugin's logs (log_file); else stderr.
	LogFile string
	// Timeout bounds each call to the agent (timeout, a Go duration such as
	// "30s").
	Timeout time.Duration

	// RawPrevResult is prevResult exactly as it appeared on stdin, nil when
	// absent or null.
	RawPrevResult json.RawMessage
}

type rawConfig struct {
	CNIVersion  string          `json:"cniVersion"`
	Name        string          `json:"name"`
	Type        string          `json:"type"`
	AgentSocket *string         `json:"agent_socket"`
	LogLevel    *string         `json:"log_level"`
	LogFile     *string         `json:"log_file"`
	Timeout     *string         `json:"timeout"`
	PrevResult  json.RawMessage `json:"prevResult"`
}

// ParseConfig parses and validates the plugin's config from stdin bytes. The
// prevResult, when present, is parsed into PluginConf.PrevResult for the
// config's cniVersion. Every error is a *types.Error.
func ParseConfig(stdin []byte) (*Config, error) {
	var raw rawConfig
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("ambit-cni: network config is not valid JSON: %v", err),
			"fix the ambit-cni entry in the CNI conflist")
	}
	if raw.CNIVersion == "" {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion,
			"ambit-cni: network config has no cniVersion", "set cniVersion to 1.0.0 or 1.1.0 in the conflist")
	}
	if err := (&version.Reconciler{}).Check(raw.CNIVersion, Versions); err != nil {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion,
			fmt.Sprintf("ambit-cni: unsupported cniVersion %q", raw.CNIVersion), err.Details())
	}
	cfg := &Config{
		PluginConf:  types.PluginConf{CNIVersion: raw.CNIVersion, Name: raw.Name, Type: raw.Type},
		AgentSocket: agentapi.DefaultSocketPath,
		LogLevel:    slog.LevelInfo,
		Timeout:     DefaultTimeout,
	}
	if raw.AgentSocket != nil && *raw.AgentSocket != "" {
		if !filepath.IsAbs(*raw.AgentSocket) {
			return nil, invalid("%s %q is not an absolute path", KeyAgentSocket, *raw.AgentSocket)
		}
		cfg.AgentSocket = filepath.Clean(*raw.AgentSocket)
	}
	if raw.LogLevel != nil && *raw.LogLevel != "" {
		if err := cfg.LogLevel.UnmarshalText([]byte(strings.ToLower(*raw.LogLevel))); err != nil {
			return nil, invalid("%s %q is not one of debug, info, warn, error", KeyLogLevel, *raw.LogLevel)
		}
	}
	if raw.LogFile != nil && *raw.LogFile != "" {
		if !filepath.IsAbs(*raw.LogFile) {
			return nil, invalid("%s %q is not an absolute path", KeyLogFile, *raw.LogFile)
		}
		cfg.LogFile = filepath.Clean(*raw.LogFile)
	}
	if raw.Timeout != nil && *raw.Timeout != "" {
		d, err := time.ParseDuration(*raw.Timeout)
		if err != nil || d <= 0 {
			return nil, invalid("%s %q is not a positive duration such as \"30s\"", KeyTimeout, *raw.Timeout)
		}
		cfg.Timeout = d
	}
	if p := bytes.TrimSpace(raw.PrevResult); len(p) > 0 && !bytes.Equal(p, []byte("null")) {
		res, err := version.NewResult(cfg.CNIVersion, p)
		if err != nil {
			return nil, types.NewError(types.ErrDecodingFailure,
				fmt.Sprintf("ambit-cni: cannot parse prevResult: %v", err),
				"the plugin before ambit-cni in the chain produced a result this cniVersion cannot read")
		}
		cfg.PrevResult = res
		cfg.RawPrevResult = p
	}
	return cfg, nil
}

func invalid(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig,
		"ambit-cni: "+fmt.Sprintf(format, args...), "fix the ambit-cni entry in the CNI conflist")
}
