package local

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/e2e/meshcheck"
	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

// requireTools skips (fails under CI=true) when a tool the tests run is
// missing; hack/install-deps.sh installs them all.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			netnstest.SkipOrFail(t, "%s not installed (hack/install-deps.sh installs it): %v", tool, err)
		}
	}
}

// newMarker returns a unique text to send and look for on the wire.
func newMarker(kind string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "ambit-" + kind + "-" + hex.EncodeToString(b[:])
}

// call runs `ambit-echo client` in a pod through `ambitctl local exec`.
// It returns the client's output and an error when a call failed.
func (m *mesh) call(from, proto, addr, marker string, n int) (string, error) {
	out, err := m.run("exec", from, "--", "ambit-echo", "client", "-proto", proto, "-addr", addr,
		"-n", strconv.Itoa(n), "-marker", marker, "-timeout", "3s")
	if err != nil {
		return out, fmt.Errorf("%s -> %s (%s): %v: %s", from, addr, proto, err, strings.TrimSpace(out))
	}
	if want := fmt.Sprintf("%d ok", n); !strings.Contains(out, want) {
		return out, fmt.Errorf("%s -> %s (%s): output lacks %q: %s", from, addr, proto, want, out)
	}
	return out, nil
}

// mustCall retries a call for up to d (the mesh converges asynchronously)
// and returns the output of the first that succeeded.
func (m *mesh) mustCall(t *testing.T, d time.Duration, from, proto, addr, marker string, n int) string {
	t.Helper()
	var out string
	eventually(t, from+" -> "+addr, d, func() error {
		var err error
		out, err = m.call(from, proto, addr, marker, n)
		return err
	})
	return out
}

// peerOf returns the peer address the echo server saw in the last answer
// of a client output ("peer=IP:PORT").
func peerOf(out string) netip.Addr {
	_, rest, ok := strings.Cut(out, "peer=")
	if !ok {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(strings.Fields(rest)[0])
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr()
}

// nodeGet makes an HTTP GET from inside a node's network namespace (the
// ztunnel's admin and metrics ports).
func nodeGet(node string, port int, path string) (string, error) {
	ns, err := netns.OpenName("ambitl-node-" + node)
	if err != nil {
		return "", err
	}
	defer ns.Close()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: (&netns.Sockets{NS: ns}).Dial, DisableKeepAlives: true,
	}}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s on node %s: status %d: %s", path, node, resp.StatusCode, b)
	}
	return string(b), nil
}

// metricSum adds the values of the samples of a metric whose labels hold
// every label of want.
func metricSum(text, name string, want map[string]string) float64 {
	return meshcheck.MetricSum(text, name, want)
}

// inboundOpened is the destination-reported count of connections opened to
// a workload from a source principal, as the node's ztunnel exports it.
func inboundOpened(t *testing.T, node, srcPrincipal, dstWorkload string) float64 {
	t.Helper()
	text, err := nodeGet(node, 15020, "/stats/prometheus")
	if err != nil {
		t.Fatalf("ztunnel metrics on %s: %v", node, err)
	}
	return metricSum(text, "istio_tcp_connections_opened_total", map[string]string{
		"reporter": "destination", "source_principal": srcPrincipal, "destination_workload": dstWorkload,
	})
}

// podNetns is the network namespace of a pod named "namespace/name".
func podNetns(pod string) string { return "ambitl-pod-" + strings.ReplaceAll(pod, "/", "-") }

// podCaller is one call from inside the pod's network namespace on a new
// connection, for meshcheck.ExpectDenied: "tcp" sends a line to the echo
// server and wants it echoed, "http" wants a GET answered 200. Unlike
// m.call it keeps the error's type (a reset is told from a timeout).
func podCaller(pod, proto, addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		ns, err := netns.OpenName(podNetns(pod))
		if err != nil {
			return err
		}
		defer ns.Close()
		sockets := &netns.Sockets{NS: ns}
		marker := newMarker("call")
		switch proto {
		case "tcp":
			c, err := sockets.Dial(ctx, "tcp", addr)
			if err != nil {
				return err
			}
			defer c.Close()
			if dl, ok := ctx.Deadline(); ok {
				_ = c.SetDeadline(dl)
			}
			if _, err := fmt.Fprintf(c, "%s\n", marker); err != nil {
				return err
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return fmt.Errorf("%s -> %s (tcp): reading the answer: %w", pod, addr, err)
			}
			if !strings.Contains(line, "echo="+marker) {
				return fmt.Errorf("%s -> %s (tcp): answer %q lacks the marker", pod, addr, line)
			}
			return nil
		case "http":
			var w meshcheck.ResetWatch
			client := &http.Client{Transport: &http.Transport{DialContext: w.Dial(sockets.Dial), DisableKeepAlives: true}}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/"+marker, nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return w.Err(err)
			}
			defer resp.Body.Close()
			if _, err := io.Copy(io.Discard, resp.Body); err != nil {
				return w.Err(fmt.Errorf("%s -> %s (http): reading the body: %w", pod, addr, err))
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s -> %s (http): status %d", pod, addr, resp.StatusCode)
			}
			return nil
		}
		return fmt.Errorf("proto %q: want tcp or http", proto)
	}
}

// ztunnelDenials reads the node's ztunnel's meshcheck.DenyCount for want,
// for meshcheck.ExpectDenied.
func ztunnelDenials(node string, want map[string]string) func(context.Context) (float64, error) {
	return func(context.Context) (float64, error) {
		text, err := nodeGet(node, 15020, "/stats/prometheus")
		if err != nil {
			return 0, fmt.Errorf("ztunnel metrics on %s: %w", node, err)
		}
		return meshcheck.DenyCount(text, want), nil
	}
}

// ztunnelPodListeners reports whether the node's ztunnel has in-pod
// listeners for the pod uid (config_dump's "pods").
func ztunnelPodListeners(node, uid string) (bool, error) {
	dump, err := nodeGet(node, 15000, "/config_dump")
	if err != nil {
		return false, err
	}
	_, pods, ok := strings.Cut(dump, `"pods"`)
	if !ok {
		return false, errors.New("config_dump has no pods section")
	}
	return strings.Contains(pods, `"`+uid+`"`), nil
}

// inNetns runs a command in a named network namespace; it returns the
// combined output.
func inNetns(nsName string, argv ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"--net=" + netns.Path(nsName), "--"}, argv...)...).CombinedOutput()
	return string(out), err
}

func netnsInode(t *testing.T, nsName string) uint64 {
	t.Helper()
	id, err := netns.IDOfPath(netns.Path(nsName))
	if err != nil {
		t.Fatal(err)
	}
	return id.Ino
}

// procPID is the pid status shows for a process.
func (s status) procPID(name string) int {
	for _, p := range s.Processes {
		if p.Name == name {
			return p.PID
		}
	}
	return 0
}

// podIdentity is the pid and netns of a pod's process: what must not change
// while the node's components restart.
type podIdentity struct {
	pid   int
	inode uint64
}

func (m *mesh) podIdentity(t *testing.T, ns, pod string) podIdentity {
	t.Helper()
	return podIdentity{m.status().procPID("pod-" + ns + "-" + pod), netnsInode(t, "ambitl-pod-"+ns+"-"+pod)}
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// capture is a tcpdump writing TCP packets on one interface of a network
// namespace to a pcap file.
type capture struct {
	cmd    *exec.Cmd
	file   string
	stderr *syncBuffer
	done   chan struct{}
}

// startCapture starts tcpdump in nsName on iface and returns once it
// captures (it printed "listening on").
func startCapture(t *testing.T, nsName, iface string) *capture {
	t.Helper()
	c := &capture{file: filepath.Join(t.TempDir(), iface+".pcap"), stderr: &syncBuffer{}, done: make(chan struct{})}
	// -Z root: tcpdump would drop to its own user and could not write the
	// test's temp dir. --immediate-mode: without it packets wait in the
	// kernel's ring for a block timeout and those pending at SIGINT are
	// lost (seen: "8 packets received by filter, 0 captured"). -U: write
	// each packet to the file at once.
	c.cmd = exec.Command("nsenter", "--net="+netns.Path(nsName), "--", "tcpdump", "-Z", "root", "--immediate-mode", "-U",
		"-nn", "-s", "0", "-i", iface, "-w", c.file, "tcp")
	c.cmd.Stderr = c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("starting tcpdump: %v", err)
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		<-c.done
	})
	deadline := time.After(10 * time.Second)
	for !strings.Contains(c.stderr.String(), "listening on") {
		select {
		case <-c.done:
			t.Fatalf("tcpdump in %s on %s exited: %s", nsName, iface, c.stderr.String())
		case <-deadline:
			t.Fatalf("tcpdump in %s on %s not capturing after 10s: %s", nsName, iface, c.stderr.String())
		case <-time.After(20 * time.Millisecond): // polling tcpdump's stderr
		}
	}
	return c
}

// stop ends the capture (SIGINT, as a user would) and returns the packets
// and the file's raw bytes. It first waits (up to 5s) until the file holds
// last, the marker of the last traffic sent, so that nothing sent before is
// still on its way to the file.
func (c *capture) stop(t *testing.T, last string) ([]packet, []byte) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(c.file); bytes.Contains(b, []byte(last)) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling the capture file
	}
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("tcpdump did not exit on SIGINT: %s", c.stderr.String())
	}
	raw, err := os.ReadFile(c.file)
	if err != nil {
		t.Fatalf("reading the capture: %v (tcpdump: %s)", err, c.stderr.String())
	}
	pkts, err := parsePcap(raw)
	if err != nil {
		t.Fatalf("parsing the capture: %v", err)
	}
	return pkts, raw
}

// packet is one TCP/IPv4 segment of a capture.
type packet struct {
	src, dst     netip.AddrPort
	flags        byte
	payload      []byte
	synNotAcking bool
}

func (p packet) String() string {
	return fmt.Sprintf("%s -> %s flags %#x len %d", p.src, p.dst, p.flags, len(p.payload))
}

const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

// parsePcap reads a classic pcap file of Ethernet frames and returns its
// TCP/IPv4 segments; other frames are skipped.
func parsePcap(b []byte) ([]packet, error) {
	if len(b) < 24 {
		return nil, fmt.Errorf("pcap: %d bytes, no header", len(b))
	}
	var bo binary.ByteOrder
	switch m := binary.LittleEndian.Uint32(b); m {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("pcap: magic %#x (pcapng is not read here)", m)
	}
	if lt := bo.Uint32(b[20:]); lt != 1 {
		return nil, fmt.Errorf("pcap: link type %d, want 1 (Ethernet)", lt)
	}
	var out []packet
	for off := 24; off+16 <= len(b); {
		incl := int(bo.Uint32(b[off+8:]))
		off += 16
		if off+incl > len(b) {
			break // a record cut short when tcpdump stopped
		}
		frame := b[off : off+incl]
		off += incl
		if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
			continue
		}
		ip := frame[14:]
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if ip[9] != 6 || ihl < 20 || total > len(ip) || total < ihl+20 {
			continue
		}
		tcp := ip[ihl:total]
		doff := int(tcp[12]>>4) * 4
		if doff < 20 || doff > len(tcp) {
			continue
		}
		src, _ := netip.AddrFromSlice(ip[12:16])
		dst, _ := netip.AddrFromSlice(ip[16:20])
		p := packet{
			src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:])),
			dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:])),
			flags:   tcp[13],
			payload: tcp[doff:],
		}
		p.synNotAcking = p.flags&tcpSYN != 0 && p.flags&tcpACK == 0
		out = append(out, p)
	}
	return out, nil
}

// tlsRecordStart reports whether a segment starts with a TLS record header
// of the given content type (0x16 handshake, 0x17 application data) and a
// TLS 1.0-1.2 record version (TLS 1.3 records say 0x0303, a ClientHello
// may say 0x0301).
func tlsRecordStart(payload []byte, contentType byte) bool {
	return len(payload) >= 5 && payload[0] == contentType && payload[1] == 0x03 && (payload[2] == 0x03 || payload[2] == 0x01)
}
