package plugin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/ambit-mesh/ambit/cni/agentapi"
	"github.com/ambit-mesh/ambit/cni/plugin"
)

// binDir holds the ambit-cni binary built once for the package's tests.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "ambit-cni-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, plugin.PluginType), "github.com/ambit-mesh/ambit/cni/cmd/ambit-cni")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building ambit-cni:", err)
			return 1
		}
		binDir = dir
		return m.Run()
	}())
}

// fakeAgent decides by pod name: "enrolled-*" enroll, "fail-*" fail,
// "slow-*" block until the caller gives up, "gone-*" report lost capture,
// anything else is not enrolled.
type fakeAgent struct {
	mu       sync.Mutex
	enrolls  []agentapi.EnrollRequest
	releases []agentapi.ReleaseRequest
	notReady error
}

func (f *fakeAgent) Enroll(ctx context.Context, req agentapi.EnrollRequest) (agentapi.EnrollResponse, error) {
	f.mu.Lock()
	f.enrolls = append(f.enrolls, req)
	f.mu.Unlock()
	switch {
	case strings.HasPrefix(req.Name, "enrolled-"):
		return agentapi.EnrollResponse{Enrolled: true}, nil
	case strings.HasPrefix(req.Name, "fail-"):
		return agentapi.EnrollResponse{}, errors.New("programming nftables in pod netns: operation not permitted")
	case strings.HasPrefix(req.Name, "slow-"):
		<-ctx.Done()
		return agentapi.EnrollResponse{}, ctx.Err()
	}
	return agentapi.EnrollResponse{Enrolled: false, Reason: "namespace not in the mesh"}, nil
}

func (f *fakeAgent) Release(_ context.Context, req agentapi.ReleaseRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.releases = append(f.releases, req)
	return nil
}

func (f *fakeAgent) Check(_ context.Context, req agentapi.CheckRequest) (agentapi.CheckResponse, error) {
	switch {
	case strings.HasPrefix(req.Name, "enrolled-"):
		return agentapi.CheckResponse{Enrolled: true, CaptureInPlace: true}, nil
	case strings.HasPrefix(req.Name, "gone-"):
		return agentapi.CheckResponse{Enrolled: true, CaptureInPlace: false, Reason: "nftables table ambit missing"}, nil
	}
	return agentapi.CheckResponse{}, nil
}

func (f *fakeAgent) Status(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.notReady
}

func (f *fakeAgent) calls() ([]agentapi.EnrollRequest, []agentapi.ReleaseRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]agentapi.EnrollRequest(nil), f.enrolls...), append([]agentapi.ReleaseRequest(nil), f.releases...)
}

// startAgent serves a fakeAgent on a unix socket in a temp dir.
func startAgent(t *testing.T) (*fakeAgent, string) {
	t.Helper()
	// unix socket paths are limited to 108 bytes: keep it short.
	dir, err := os.MkdirTemp("", "ambit-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	l, err := agentapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	fa := &fakeAgent{}
	srv := &http.Server{Handler: agentapi.NewServer(fa)}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return fa, sock
}

func prevResult(ver string) string {
	return `{"cniVersion":"` + ver + `","interfaces":[{"name":"eth0","mac":"0a:58:c0:00:02:05","sandbox":"/var/run/netns/pod"}],` +
		`"ips":[{"interface":0,"address":"192.0.2.5/24","gateway":"192.0.2.1"},{"interface":0,"address":"2001:db8::5/64"}],` +
		`"routes":[{"dst":"0.0.0.0/0","gw":"192.0.2.1"}],"dns":{"nameservers":["192.0.2.53"],"search":["svc.cluster.local"]}}`
}

func netConf(ver, sock, prev, extra string) []byte {
	s := `{"cniVersion":"` + ver + `","name":"k8s-pod-network","type":"ambit-cni","agent_socket":"` + sock + `"`
	if extra != "" {
		s += "," + extra
	}
	if prev != "" {
		s += `,"prevResult":` + prev
	}
	return []byte(s + "}")
}

type run struct {
	stdout, stderr []byte
	err            *types.Error // nil on exit 0
}

func podArgs(name string) string {
	return "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=" + name + ";K8S_POD_UID=uid-" + name + ";K8S_POD_INFRA_CONTAINER_ID=c1"
}

// invoke runs the built binary as a runtime would.
func invoke(t *testing.T, command string, stdin []byte, cniArgs string) run {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, plugin.PluginType))
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=c1",
		"CNI_NETNS=/var/run/netns/ambit-test-absent",
		"CNI_IFNAME=eth0",
		"CNI_PATH=" + binDir,
		"CNI_ARGS=" + cniArgs,
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := run{stdout: out.Bytes(), stderr: errb.Bytes()}
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("running plugin: %v", err)
		}
		r.err = &types.Error{}
		if jerr := json.Unmarshal(out.Bytes(), r.err); jerr != nil {
			t.Fatalf("%s exited %v with non-JSON stdout %q (stderr %q)", command, err, out.String(), errb.String())
		}
	}
	return r
}

func mustOK(t *testing.T, r run) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("want success, got CNI error %d %q (%s); stderr %s", r.err.Code, r.err.Msg, r.err.Details, r.stderr)
	}
}

func mustFail(t *testing.T, r run, code uint, msgParts ...string) {
	t.Helper()
	if r.err == nil {
		t.Fatalf("want CNI error %d, got success with stdout %s", code, r.stdout)
	}
	if r.err.Code != code {
		t.Errorf("code = %d (%q), want %d", r.err.Code, r.err.Msg, code)
	}
	for _, p := range msgParts {
		if !strings.Contains(r.err.Msg+"; "+r.err.Details, p) {
			t.Errorf("error %q (details %q) does not mention %q", r.err.Msg, r.err.Details, p)
		}
	}
}

func compact(t *testing.T, b []byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, bytes.TrimSpace(b)); err != nil {
		t.Fatalf("not JSON: %q: %v", b, err)
	}
	return buf.String()
}

func TestLifecycleBothVersions(t *testing.T) {
	for _, ver := range []string{"1.0.0", "1.1.0"} {
		t.Run(ver, func(t *testing.T) {
			fa, sock := startAgent(t)
			prev := prevResult(ver)
			conf := netConf(ver, sock, prev, `"log_level":"debug","timeout":"10s"`)

			r := invoke(t, "ADD", conf, podArgs("enrolled-web"))
			mustOK(t, r)
			if got, want := compact(t, r.stdout), compact(t, []byte(prev)); got != want {
				t.Errorf("ADD result\n got %s\nwant %s", got, want)
			}
			enrolls, _ := fa.calls()
			if len(enrolls) != 1 {
				t.Fatalf("agent saw %d enroll calls, want 1", len(enrolls))
			}
			e := enrolls[0]
			if e.Namespace != "shop" || e.Name != "enrolled-web" || e.UID != "uid-enrolled-web" ||
				e.ContainerID != "c1" || e.IfName != "eth0" || e.Netns != "/var/run/netns/ambit-test-absent" {
				t.Errorf("enroll request = %+v", e)
			}
			if fmt.Sprint(e.IPs) != "[192.0.2.5 2001:db8::5]" {
				t.Errorf("enroll IPs = %v", e.IPs)
			}

			mustOK(t, invoke(t, "CHECK", conf, podArgs("enrolled-web")))
			mustFail(t, invoke(t, "CHECK", conf, podArgs("gone-web")), plugin.CodeCaptureMissing, "nftables table ambit missing")

			mustOK(t, invoke(t, "DEL", conf, podArgs("enrolled-web")))
			mustOK(t, invoke(t, "DEL", conf, podArgs("enrolled-web"))) // idempotent
			_, rel := fa.calls()
			if len(rel) != 2 || rel[0].Name != "enrolled-web" {
				t.Errorf("releases = %+v", rel)
			}

			r = invoke(t, "VERSION", conf, "")
			mustOK(t, r)
			var vi struct {
				CNIVersion        string   `json:"cniVersion"`
				SupportedVersions []string `json:"supportedVersions"`
			}
			if err := json.Unmarshal(r.stdout, &vi); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(vi.SupportedVersions) != "[1.0.0 1.1.0]" {
				t.Errorf("supportedVersions = %v", vi.SupportedVersions)
			}
		})
	}
}

func TestNotEnrolledPassesThroughIdentical(t *testing.T) {
	fa, sock := startAgent(t)
	prev := prevResult("1.0.0")
	r := invoke(t, "ADD", netConf("1.0.0", sock, prev, ""), podArgs("plain"))
	mustOK(t, r)
	if !bytes.Equal(bytes.TrimSpace(r.stdout), []byte(prev)) {
		t.Errorf("pass-through result differs\n got %s\nwant %s", r.stdout, prev)
	}
	if enrolls, _ := fa.calls(); len(enrolls) != 1 {
		t.Errorf("agent not asked: %d enroll calls", len(enrolls))
	}
}

func TestNotAKubernetesPod(t *testing.T) {
	fa, sock := startAgent(t)
	prev := prevResult("1.1.0")
	conf := netConf("1.1.0", sock, prev, "")
	r := invoke(t, "ADD", conf, "")
	mustOK(t, r)
	if got, want := compact(t, r.stdout), compact(t, []byte(prev)); got != want {
		t.Errorf("got %s want %s", got, want)
	}
	mustOK(t, invoke(t, "DEL", conf, ""))
	if e, rel := fa.calls(); len(e)+len(rel) != 0 {
		t.Errorf("agent called for a non-pod: %v %v", e, rel)
	}
}

func TestAgentUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	prev := prevResult("1.0.0")
	r := invoke(t, "ADD", netConf("1.0.0", sock, prev, ""), podArgs("enrolled-web"))
	mustFail(t, r, types.ErrTryAgainLater, "node agent at "+sock+" unreachable", "is the ambit cni-agent DaemonSet running on this node?")
	mustOK(t, invoke(t, "DEL", netConf("1.0.0", sock, prev, ""), podArgs("enrolled-web")))
	mustFail(t, invoke(t, "CHECK", netConf("1.0.0", sock, prev, ""), podArgs("enrolled-web")), types.ErrTryAgainLater, "unreachable")
}

func TestEnrollmentFailureFailsAdd(t *testing.T) {
	_, sock := startAgent(t)
	r := invoke(t, "ADD", netConf("1.1.0", sock, prevResult("1.1.0"), ""), podArgs("fail-web"))
	mustFail(t, r, plugin.CodeEnrollFailed, "shop/fail-web", "programming nftables in pod netns: operation not permitted")
}

func TestAgentSlowerThanTimeout(t *testing.T) {
	_, sock := startAgent(t)
	r := invoke(t, "ADD", netConf("1.1.0", sock, prevResult("1.1.0"), `"timeout":"300ms"`), podArgs("slow-web"))
	mustFail(t, r, types.ErrTryAgainLater, "did not enroll pod shop/slow-web within 300ms")
}

func TestStatus(t *testing.T) {
	fa, sock := startAgent(t)
	conf := netConf("1.1.0", sock, "", "")
	mustOK(t, invoke(t, "STATUS", conf, ""))

	fa.mu.Lock()
	fa.notReady = errors.New("ztunnel not connected")
	fa.mu.Unlock()
	mustFail(t, invoke(t, "STATUS", conf, ""), types.ErrPluginNotAvailable, "ztunnel not connected")

	down := netConf("1.1.0", filepath.Join(t.TempDir(), "down.sock"), "", "")
	mustFail(t, invoke(t, "STATUS", down, ""), types.ErrPluginNotAvailable, "unreachable", "cni-agent DaemonSet")

	// STATUS is a 1.1.0 verb.
	mustFail(t, invoke(t, "STATUS", netConf("1.0.0", sock, "", ""), ""), types.ErrIncompatibleCNIVersion)
}

func TestBadInput(t *testing.T) {
	_, sock := startAgent(t)
	prev := prevResult("1.0.0")
	cases := []struct {
		name  string
		stdin string
		args  string
		code  uint
		msg   string
	}{
		{"not JSON", `{"cniVersion":`, podArgs("enrolled-a"), types.ErrDecodingFailure, ""},
		{"missing cniVersion", `{"name":"n","type":"ambit-cni","prevResult":` + prev + `}`, podArgs("enrolled-a"), types.ErrIncompatibleCNIVersion, ""},
		{"unsupported version", string(netConf("0.3.1", sock, "", "")), podArgs("enrolled-a"), types.ErrIncompatibleCNIVersion, ""},
		{"missing prevResult", string(netConf("1.0.0", sock, "", "")), podArgs("enrolled-a"), types.ErrInvalidNetworkConfig, "chained plugin"},
		{"bad timeout", string(netConf("1.0.0", sock, prev, `"timeout":"soon"`)), podArgs("enrolled-a"), types.ErrInvalidNetworkConfig, "timeout"},
		{"relative socket", string(netConf("1.0.0", "agent.sock", prev, "")), podArgs("enrolled-a"), types.ErrInvalidNetworkConfig, "agent_socket"},
		{"bad log level", string(netConf("1.0.0", sock, prev, `"log_level":"loud"`)), podArgs("enrolled-a"), types.ErrInvalidNetworkConfig, "log_level"},
		{"bad prevResult", string(netConf("1.0.0", sock, `{"ips":"x"}`, "")), podArgs("enrolled-a"), types.ErrDecodingFailure, "prevResult"},
		{"malformed CNI_ARGS", string(netConf("1.0.0", sock, prev, "")), "K8S_POD_NAME", types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := invoke(t, "ADD", []byte(tc.stdin), tc.args)
			mustFail(t, r, tc.code, tc.msg)
		})
	}
}

func TestLogFile(t *testing.T) {
	_, sock := startAgent(t)
	logFile := filepath.Join(t.TempDir(), "cni.log")
	mustOK(t, invoke(t, "ADD", netConf("1.1.0", sock, prevResult("1.1.0"), `"log_file":"`+logFile+`"`), podArgs("enrolled-web")))
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "pod enrolled") || !strings.Contains(string(b), "pod=enrolled-web") {
		t.Errorf("log file lacks the enrollment line: %s", b)
	}
}

// TestThroughLibcni drives the binary the way a container runtime does.
func TestThroughLibcni(t *testing.T) {
	fa, sock := startAgent(t)
	ctx := context.Background()
	cni := libcni.NewCNIConfigWithCacheDir([]string{binDir}, t.TempDir(), nil)
	rt := &libcni.RuntimeConf{
		ContainerID: "c1",
		NetNS:       "/var/run/netns/ambit-test-absent",
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_NAME", "enrolled-cart"}, {"K8S_POD_UID", "u1"},
		},
	}

	// A single-plugin list whose plugin carries the previous result, standing
	// in for the primary CNI that would normally run first.
	list, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.1.0","name":"k8s-pod-network","plugins":[` +
		`{"type":"ambit-cni","log_level":"warn","agent_socket":"` + sock + `","prevResult":` + prevResult("1.1.0") + `}]}`))
	if err != nil {
		t.Fatal(err)
	}
	res, err := cni.AddNetworkList(ctx, list, rt)
	if err != nil {
		t.Fatalf("AddNetworkList: %v", err)
	}
	if got, want := res.Version(), "1.1.0"; got != want {
		t.Errorf("result version %s, want %s", got, want)
	}
	var buf bytes.Buffer
	if err := res.PrintTo(&buf); err != nil {
		t.Fatal(err)
	}
	// libcni re-encodes the config through a map, so compare as JSON values.
	var got, want any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(prevResult("1.1.0")), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("result\n got %s\nwant %s", buf.Bytes(), prevResult("1.1.0"))
	}
	if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
		t.Errorf("CheckNetworkList: %v", err)
	}
	if err := cni.GetStatusNetworkList(ctx, list); err != nil {
		t.Errorf("GetStatusNetworkList: %v", err)
	}
	if err := cni.DelNetworkList(ctx, list, rt); err != nil {
		t.Errorf("DelNetworkList: %v", err)
	}
	vi, err := cni.GetVersionInfo(ctx, plugin.PluginType)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(vi.SupportedVersions()) != "[1.0.0 1.1.0]" {
		t.Errorf("versions %v", vi.SupportedVersions())
	}
	enrolls, rel := fa.calls()
	if len(enrolls) != 1 || len(rel) != 1 {
		t.Errorf("agent calls: %d enroll, %d release", len(enrolls), len(rel))
	}

	// Single network config, AddNetwork.
	one, err := libcni.NetworkPluginConfFromBytes(netConf("1.0.0", sock, prevResult("1.0.0"), `"log_level":"warn"`))
	if err != nil {
		t.Fatal(err)
	}
	rt.Args[2][1] = "plain-cart"
	if _, err := cni.AddNetwork(ctx, one, rt); err != nil {
		t.Fatalf("AddNetwork: %v", err)
	}
	if err := cni.DelNetwork(ctx, one, rt); err != nil {
		t.Fatalf("DelNetwork: %v", err)
	}
}
