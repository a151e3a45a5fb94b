package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/ctl/local"
	"github.com/ambit-mesh/ambit/pkg/netns"
)

//go:embed mesh.yaml
var meshTopology []byte

// meshStatus is the part of `ambitctl local status -o json` the bench reads.
type meshStatus struct {
	Pods []struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
		IP        string `json:"ip"`
		Captured  bool   `json:"captured"`
	} `json:"pods"`
	Processes []struct {
		Name string `json:"name"`
		PID  int    `json:"pid"`
	} `json:"processes"`
}

func (s meshStatus) ip(ns, name string) string {
	for _, p := range s.Pods {
		if p.Namespace == ns && p.Name == name {
			return p.IP
		}
	}
	return ""
}

// runMesh measures pod → pod across two nodes of a local mesh: the plain
// namespace goes direct over the node link, the bench namespace through
// ztunnel → HBONE → ztunnel; then, unless held is 0, the ztunnels'
// resources with held connections open (runHeld). It replaces any local
// mesh already running.
func runMesh(binDir string, duration time.Duration, pings, held int) error {
	if os.Geteuid() != 0 {
		return errors.New("the pod-to-pod part needs root (it builds a local mesh); run 'sudo make bench' or pass -mesh=false")
	}
	binDir, err := filepath.Abs(binDir)
	if err != nil {
		return err
	}
	ambitctl := filepath.Join(binDir, "ambitctl")
	if _, err := os.Stat(ambitctl); err != nil {
		return fmt.Errorf("%s not found: run 'make build' first", ambitctl)
	}
	topo, err := os.CreateTemp("", "ambit-bench-mesh-*.yaml")
	if err != nil {
		return err
	}
	defer os.Remove(topo.Name())
	if _, err := topo.Write(meshTopology); err != nil {
		return err
	}
	topo.Close()

	fmt.Printf("\npod → pod across two nodes of a local mesh (veth + bridge + node link; %s per throughput run)\n", duration)
	if out, err := exec.Command(ambitctl, "local", "up", "-f", topo.Name()).CombinedOutput(); err != nil {
		return fmt.Errorf("ambitctl local up: %w\n%s", err, out)
	}
	defer exec.Command(ambitctl, "local", "down").Run()
	out, err := exec.Command(ambitctl, "local", "status", "-o", "json").Output()
	if err != nil {
		return fmt.Errorf("ambitctl local status: %w", err)
	}
	var st meshStatus
	if err := json.Unmarshal(out, &st); err != nil {
		return fmt.Errorf("ambitctl local status: %w", err)
	}
	var ztunnels []int
	ztunnelPIDs := map[string]int{}
	for _, p := range st.Processes {
		if strings.HasPrefix(p.Name, "ztunnel-") {
			ztunnels = append(ztunnels, p.PID)
			ztunnelPIDs[p.Name] = p.PID
		}
	}

	iperfIn := func(ns string) (iperfResult, error) {
		server := st.ip(ns, "iperf")
		var r iperfResult
		err := poll(10*time.Second, func() error {
			out, err := exec.Command(ambitctl, "local", "exec", ns+"/client", "--",
				"iperf3", "-c", server, "-t", fmt.Sprint(int(duration.Seconds())), "-J").Output()
			if err != nil {
				return fmt.Errorf("iperf3 from %s/client to %s: %w: %s", ns, server, err, out)
			}
			r, err = parseIperf(out)
			return err
		})
		return r, err
	}
	direct, err := iperfIn("plain")
	if err != nil {
		return err
	}
	cpu0, err := sumCPU(ztunnels)
	if err != nil {
		return err
	}
	meshed, err := iperfIn("bench")
	if err != nil {
		return err
	}
	cpu1, err := sumCPU(ztunnels)
	if err != nil {
		return err
	}
	fmt.Println("throughput (iperf3, one TCP stream, node-a → node-b)")
	fmt.Printf("  direct (not enrolled)  %8.2f Gbit/s\n", direct.gbps)
	fmt.Printf("  through the mesh       %8.2f Gbit/s   ratio %.2f× direct\n", meshed.gbps, meshed.gbps/direct.gbps)
	fmt.Printf("  ztunnel CPU            %8.2f CPU-s/GB (both nodes, %.2f CPU-s for %.2f GB)\n\n",
		(cpu1-cpu0)/(float64(meshed.bytes)/1e9), cpu1-cpu0, float64(meshed.bytes)/1e9)

	pingIn := func(ns string) ([]time.Duration, error) {
		nsf, err := netns.OpenName(local.PodNetns(ns, "client"))
		if err != nil {
			return nil, err
		}
		defer nsf.Close()
		addr := net.JoinHostPort(st.ip(ns, "echo"), "9001")
		var c net.Conn
		err = poll(10*time.Second, func() error {
			var err error
			c, err = netns.DialIn(context.Background(), nsf, "tcp", addr)
			return err
		})
		if err != nil {
			return nil, err
		}
		defer c.Close()
		return pingPongConn(c, pings)
	}
	dLat, err := pingIn("plain")
	if err != nil {
		return err
	}
	mLat, err := pingIn("bench")
	if err != nil {
		return err
	}
	fmt.Println("round trip, 1-byte ping-pong on one connection, node-a → node-b")
	fmt.Printf("  direct (not enrolled)  p50 %8s   p99 %8s\n", us(pct(dLat, 50)), us(pct(dLat, 99)))
	fmt.Printf("  through the mesh       p50 %8s   p99 %8s   added p50 %s\n", us(pct(mLat, 50)), us(pct(mLat, 99)), us(pct(mLat, 50)-pct(dLat, 50)))
	if held == 0 {
		return nil
	}
	echo, err := netip.ParseAddr(st.ip("bench", "echo"))
	if err != nil {
		return fmt.Errorf("bench/echo has no address: %w", err)
	}
	return runHeld(ztunnelPIDs, "bench", echo, held, time.Minute)
}

func sumCPU(pids []int) (float64, error) {
	var total float64
	for _, pid := range pids {
		s, err := cpuSeconds(pid)
		if err != nil {
			return 0, err
		}
		total += s
	}
	return total, nil
}

// poll retries fn until it succeeds or the deadline passes (pods' servers
// may still be starting when the mesh reports ready).
func poll(within time.Duration, fn func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
