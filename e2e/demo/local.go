package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/ctl/local"
	"github.com/ambit-mesh/ambit/pkg/netns"
)

// The pods and service of deploy/examples/local/demo.yaml the demo uses.
const (
	demoClient  = "demo/client"
	demoServer  = "server-b"
	demoService = "10.96.0.10:80" // demo/echo-b, served by server-b on node-b
)

// runLocal brings up the local mesh and shows one cross-node request.
func runLocal(binDir, topo string) error {
	if os.Geteuid() != 0 {
		return errors.New("the local mesh needs root (it creates network namespaces): run 'sudo make demo', or 'make demo-tunnel' for the no-root tunnel demo")
	}
	binDir, err := filepath.Abs(binDir)
	if err != nil {
		return err
	}
	ambitctl := filepath.Join(binDir, "ambitctl")
	step("bringing up the local mesh from %s", topo)
	up := exec.Command(ambitctl, "local", "up", "-f", topo)
	up.Stdout, up.Stderr = os.Stdout, os.Stderr
	if err := up.Run(); err != nil {
		return fmt.Errorf("ambitctl local up: %w (see the lines above; 'sudo %s local down' cleans up)", err, ambitctl)
	}

	marker := fmt.Sprintf("ambit-demo-%d", time.Now().UnixNano()%1e6)
	step("%s calls the echo-b service (%s) three times; server-b runs on the other node", demoClient, demoService)
	call := exec.Command(ambitctl, "local", "exec", demoClient, "--",
		filepath.Join(binDir, "ambit-echo"), "client", "-proto", "http", "-addr", demoService, "-n", "3", "-marker", marker)
	out, err := call.CombinedOutput()
	fmt.Print(indent(string(out)))
	if err != nil {
		return fmt.Errorf("the request through the mesh failed: %w", err)
	}
	if !strings.Contains(string(out), "answered by "+demoServer+"(3)") {
		return fmt.Errorf("expected all three calls answered by %s", demoServer)
	}

	// What each ztunnel saw, from its Prometheus metrics: node-a reports as
	// the source (it verified the server), node-b as the destination (it
	// verified the client).
	srcLines, err := trafficMetrics("node-a", "source")
	if err != nil {
		return err
	}
	dstLines, err := trafficMetrics("node-b", "destination")
	if err != nil {
		return err
	}
	clientID := label(dstLines, "source_principal")
	serverID := label(srcLines, "destination_principal")
	if clientID == "" || serverID == "" {
		return errors.New("the ztunnels' metrics do not show the verified identities of this traffic")
	}
	fmt.Println()
	fmt.Printf("ztunnel on node-b (destination) verified the client:  %s\n", clientID)
	fmt.Printf("ztunnel on node-a (source)      verified the server:  %s\n", serverID)
	fmt.Println("\nmetrics for this traffic (ztunnel on node-a, reporter=source):")
	fmt.Print(indent(strings.Join(srcLines, "\n") + "\n"))
	fmt.Println("metrics for this traffic (ztunnel on node-b, reporter=destination):")
	fmt.Print(indent(strings.Join(dstLines, "\n") + "\n"))

	fmt.Printf(`
The mesh is still running. Explore it:
  sudo %[1]s local status
  sudo %[1]s local exec demo/client -- %[2]s client -proto tcp -addr 10.96.0.11:9000 -n 2
  sudo %[1]s local exec legacy/legacy -- %[2]s client -proto http -addr <demo/server-a IP>:8080   (plaintext into the mesh: PERMISSIVE)
  logs: /var/run/ambit/local/logs/
Tear it down:
  sudo %[1]s local down
`, ambitctl, filepath.Join(binDir, "ambit-echo"))
	return nil
}

// trafficMetrics returns the istio_tcp_* lines of a node's ztunnel for
// traffic from the demo client to the demo server, as that reporter.
func trafficMetrics(node, reporter string) ([]string, error) {
	ns, err := netns.OpenName(local.NodeNetns(node))
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return netns.DialIn(ctx, ns, network, addr)
		},
	}}
	resp, err := client.Get("http://127.0.0.1:15020/stats/prometheus")
	if err != nil {
		return nil, fmt.Errorf("reading ztunnel metrics on %s: %w", node, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var lines []string
	for _, l := range bytes.Split(body, []byte("\n")) {
		s := string(l)
		if strings.HasPrefix(s, "istio_tcp_") && strings.Contains(s, `reporter="`+reporter+`"`) &&
			strings.Contains(s, `source_workload="client"`) && strings.Contains(s, `destination_workload="`+demoServer+`"`) {
			lines = append(lines, s)
		}
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("ztunnel on %s has no %s metrics for %s -> %s", node, reporter, demoClient, demoServer)
	}
	return lines, nil
}

// label returns the value of a Prometheus label in the first line having it.
func label(lines []string, name string) string {
	re := regexp.MustCompile(name + `="([^"]*)"`)
	for _, l := range lines {
		if m := re.FindStringSubmatch(l); m != nil {
			return m[1]
		}
	}
	return ""
}

func indent(s string) string {
	if s == "" {
		return s
	}
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}
