// Command bench prints Ambit's data-path figures, each against a baseline
// taken in the same run on this machine (DESIGN.md section 7):
//
//   - throughput of one TCP stream (iperf3) direct vs client → HBONE → server,
//   - round-trip latency p50/p99 of 1-byte ping-pongs, direct vs tunnelled,
//   - new-connection setup time direct, with a warm pool and a cold pool,
//   - CPU seconds per GB spent by the two proxies,
//   - with -mesh (root): one TCP stream and 1-byte ping-pongs pod → pod
//     across the two nodes of a local mesh, not enrolled vs enrolled, and
//     the ztunnels' threads, open files and RSS at baseline, with -held
//     connections held open pod → pod through the mesh, and 10s after
//     they closed.
//
// The proxies run in a child process (this binary with -role proxies) so
// their CPU time is measured apart from the load generators. It is a program
// that prints figures, not a test: nothing here passes or fails on speed.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	role := flag.String("role", "", "internal: 'proxies' runs the proxy child")
	targets := flag.String("targets", "", "internal: name=addr,... for the proxy child")
	duration := flag.Duration("duration", 5*time.Second, "length of each throughput run")
	pings := flag.Int("pings", 5000, "1-byte round trips per latency run")
	dials := flag.Int("dials", 200, "connections per setup-time run")
	mesh := flag.Bool("mesh", true, "also measure pod to pod across nodes of a local mesh (root)")
	binDir := flag.String("bin", "bin", "directory of the built binaries (for -mesh)")
	held := flag.Int("held", 5000, "connections held open pod → pod for the ztunnel resource figures (-mesh; 0 skips them)")
	flag.Parse()
	var err error
	if *role == "proxies" {
		err = runProxies(parseTargets(*targets))
	} else {
		err = run(*duration, *pings, *dials)
		if err == nil && *mesh {
			err = runMesh(*binDir, *duration, *pings, *held)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseTargets(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

func run(duration time.Duration, pings, dials int) error {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return errors.New("iperf3 not found: run 'make deps' (installs it from Debian) and try again")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	echoLn, err := listenTCP()
	if err != nil {
		return err
	}
	defer echoLn.Close()
	go serveEcho(echoLn)

	iperfPort, err := freePort()
	if err != nil {
		return err
	}
	iperfAddr := "127.0.0.1:" + iperfPort
	iperfSrv := exec.CommandContext(ctx, "iperf3", "-s", "-B", "127.0.0.1", "-p", iperfPort)
	if err := iperfSrv.Start(); err != nil {
		return err
	}
	defer func() { iperfSrv.Process.Kill(); iperfSrv.Wait() }()
	if err := waitDial(iperfAddr, 10*time.Second); err != nil {
		return fmt.Errorf("iperf3 server: %w", err)
	}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.CommandContext(ctx, self, "-role", "proxies", "-targets", "iperf="+iperfAddr+",echo="+echoLn.Addr().String())
	child.Stderr = os.Stderr
	stdin, err := child.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		return err
	}
	if err := child.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); child.Wait() }()
	var addrs proxyAddrs
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("proxy child did not report its listeners: %w", err)
	}
	if err := json.Unmarshal(line, &addrs); err != nil {
		return fmt.Errorf("proxy child: %w", err)
	}

	fmt.Printf("Ambit HBONE benchmark: loopback, one stream, %s per throughput run, %d ping-pongs, %d dials\n", duration, pings, dials)
	fmt.Printf("chain: client → proxy A (TCP in, HBONE out) → proxy B (HBONE in, TCP out) → server; A and B in one child process\n\n")

	// Throughput.
	direct, err := iperf(iperfAddr, duration)
	if err != nil {
		return err
	}
	cpu0, err := cpuSeconds(child.Process.Pid)
	if err != nil {
		return err
	}
	tunnel, err := iperf(addrs.Warm["iperf"], duration)
	if err != nil {
		return err
	}
	cpu1, err := cpuSeconds(child.Process.Pid)
	if err != nil {
		return err
	}
	cpuPerGB := (cpu1 - cpu0) / (float64(tunnel.bytes) / 1e9)
	fmt.Println("throughput (iperf3, one TCP stream)")
	fmt.Printf("  direct          %8.2f Gbit/s\n", direct.gbps)
	fmt.Printf("  through HBONE   %8.2f Gbit/s   ratio %.2f× direct\n", tunnel.gbps, tunnel.gbps/direct.gbps)
	fmt.Printf("  proxy CPU       %8.2f CPU-s/GB (proxies A+B, %.2f CPU-s for %.2f GB)\n\n", cpuPerGB, cpu1-cpu0, float64(tunnel.bytes)/1e9)

	// Latency.
	dLat, err := pingPong(echoLn.Addr().String(), pings)
	if err != nil {
		return err
	}
	tLat, err := pingPong(addrs.Warm["echo"], pings)
	if err != nil {
		return err
	}
	fmt.Println("round trip, 1-byte ping-pong on one connection")
	fmt.Printf("  direct          p50 %8s   p99 %8s\n", us(pct(dLat, 50)), us(pct(dLat, 99)))
	fmt.Printf("  through HBONE   p50 %8s   p99 %8s   added p50 %s\n\n", us(pct(tLat, 50)), us(pct(tLat, 99)), us(pct(tLat, 50)-pct(dLat, 50)))

	// Connection setup.
	dSet, err := setup(echoLn.Addr().String(), dials)
	if err != nil {
		return err
	}
	wSet, err := setup(addrs.Warm["echo"], dials)
	if err != nil {
		return err
	}
	cSet, err := setup(addrs.Cold["echo"], dials)
	if err != nil {
		return err
	}
	fmt.Println("new connection: dial + first 1-byte round trip")
	fmt.Printf("  direct          p50 %8s   p99 %8s\n", us(pct(dSet, 50)), us(pct(dSet, 99)))
	fmt.Printf("  warm pool       p50 %8s   p99 %8s   (new CONNECT stream on a pooled HBONE connection)\n", us(pct(wSet, 50)), us(pct(wSet, 99)))
	fmt.Printf("  cold pool       p50 %8s   p99 %8s   (new TCP + TLS 1.3 + HTTP/2 + CONNECT)\n", us(pct(cSet, 50)), us(pct(cSet, 99)))
	return nil
}

type iperfResult struct {
	gbps  float64
	bytes int64
}

// iperf runs one iperf3 client against addr and returns what the receiver got.
func iperf(addr string, d time.Duration) (iperfResult, error) {
	host, port, _ := net.SplitHostPort(addr)
	secs := strconv.Itoa(int(d.Seconds()))
	out, err := exec.Command("iperf3", "-c", host, "-p", port, "-t", secs, "-J").Output()
	if err != nil {
		return iperfResult{}, fmt.Errorf("iperf3 -c %s: %w: %s", addr, err, bytes.TrimSpace(out))
	}
	return parseIperf(out)
}

// parseIperf reads what the receiver got from iperf3's JSON output.
func parseIperf(out []byte) (iperfResult, error) {
	var r struct {
		End struct {
			SumReceived struct {
				Bytes         int64   `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return iperfResult{}, fmt.Errorf("iperf3 output: %w", err)
	}
	if r.Error != "" {
		return iperfResult{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	return iperfResult{gbps: r.End.SumReceived.BitsPerSecond / 1e9, bytes: r.End.SumReceived.Bytes}, nil
}

// pingPong sends n 1-byte round trips on one connection.
func pingPong(addr string, n int) ([]time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return pingPongConn(c, n)
}

// pingPongConn sends n 1-byte round trips on c.
func pingPongConn(c net.Conn, n int) ([]time.Duration, error) {
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	buf := []byte{'x'}
	out := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if _, err := c.Write(buf); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return nil, fmt.Errorf("ping-pong to %s: %w", c.RemoteAddr(), err)
		}
		out = append(out, time.Since(t0))
	}
	return out, nil
}

// setup times n fresh connections up to their first 1-byte round trip.
func setup(addr string, n int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	buf := []byte{'x'}
	for i := 0; i < n; i++ {
		t0 := time.Now()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Write(buf)
		if err == nil {
			_, err = io.ReadFull(c, buf)
		}
		c.Close()
		if err != nil {
			return nil, fmt.Errorf("setup via %s: %w", addr, err)
		}
		out = append(out, time.Since(t0))
	}
	return out, nil
}

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

// cpuSeconds is the user+system CPU time of a process so far.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields of the whole line, in clock ticks (USER_HZ = 100).
	s := string(b)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, err1 := strconv.ParseFloat(rest[11], 64)
	stime, err2 := strconv.ParseFloat(rest[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (utime + stime) / 100, nil
}

func pct(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[(len(s)-1)*p/100]
}

func us(d time.Duration) string { return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond)) }

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port, nil
}

func waitDial(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
