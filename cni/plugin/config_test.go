package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/ambit-mesh/ambit/cni/agentapi"
)

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"cniVersion":"1.0.0","name":"n","type":"ambit-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AgentSocket != agentapi.DefaultSocketPath || cfg.Timeout != DefaultTimeout ||
		cfg.LogLevel != slog.LevelInfo || cfg.LogFile != "" || cfg.PrevResult != nil {
		t.Errorf("defaults: %+v", cfg)
	}
	cfg, err = ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"n","type":"ambit-cni","agent_socket":"/run/a.sock",` +
		`"log_level":"DEBUG","log_file":"/var/log/ambit-cni.log","timeout":"1m30s","prevResult":null,"unknown":{"x":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AgentSocket != "/run/a.sock" || cfg.Timeout != 90*time.Second || cfg.LogLevel != slog.LevelDebug ||
		cfg.LogFile != "/var/log/ambit-cni.log" || cfg.RawPrevResult != nil {
		t.Errorf("parsed: %+v", cfg)
	}
}

func TestParseArgs(t *testing.T) {
	a, err := ParseArgs("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u;Other=x")
	if err != nil {
		t.Fatal(err)
	}
	if !a.IsPod() || a.K8S_POD_UID != "u" {
		t.Errorf("args %+v", a)
	}
	if a, _ := ParseArgs(""); a.IsPod() {
		t.Error("empty args is a pod")
	}
}

// A prevResult in an older result version is converted to the config's.
func TestPrevResultConvertedToConfigVersion(t *testing.T) {
	var out bytes.Buffer
	p := &Plugin{Stdout: &out, Stderr: &bytes.Buffer{}, NewAgent: func(string) Agent { return nil }}
	conf := `{"cniVersion":"1.1.0","name":"n","type":"ambit-cni","prevResult":` +
		`{"cniVersion":"1.0.0","ips":[{"address":"192.0.2.9/24"}]}}`
	if err := p.Add(&skel.CmdArgs{ContainerID: "c", IfName: "eth0", StdinData: []byte(conf)}); err != nil {
		t.Fatal(err)
	}
	var res struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatal(err)
	}
	if res.CNIVersion != "1.1.0" || len(res.IPs) != 1 || res.IPs[0].Address != "192.0.2.9/24" {
		t.Errorf("result %s", out.Bytes())
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.0.0","name":"n","type":"ambit-cni"}`,
		`{"cniVersion":"1.1.0","name":"n","agent_socket":"/a","timeout":"2s","log_level":"warn","log_file":"/l",` +
			`"prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0"}],"ips":[{"interface":0,"address":"192.0.2.5/24"}]}}`,
		`{"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"x"}]}}`,
		`{"cniVersion":"0.4.0"}`,
		`{"cniVersion":"1.0.0","timeout":"-1s"}`,
		`{"cniVersion":"1.0.0","prevResult":[]}`,
		`[]`, `null`, `{`, ``,
	} {
		f.Add([]byte(s), "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b")
	}
	f.Fuzz(func(t *testing.T, stdin []byte, args string) {
		cfg, err := ParseConfig(stdin)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code == 0 || !strings.HasPrefix(te.Msg, "ambit-cni: ") {
				t.Fatalf("ParseConfig error %T %v is not an ambit-cni CNI error", err, err)
			}
		} else if cfg.Timeout <= 0 || cfg.AgentSocket == "" || (cfg.RawPrevResult != nil) != (cfg.PrevResult != nil) {
			t.Fatalf("accepted invalid config %+v", cfg)
		}
		if _, err := ParseArgs(args); err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidEnvironmentVariables {
				t.Fatalf("ParseArgs error %T %v", err, err)
			}
		}
	})
}
