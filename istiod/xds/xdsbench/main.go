// Command xdsbench measures workload discovery: one istiod xDS server (a
// child process, so its memory and CPU are its own) and N delta ADS clients
// over TLS on loopback. It prints initial sync time, change propagation
// latency (Set to the clients' stores), and the server's RSS and CPU. It
// prints figures only; it asserts nothing about time.
//
//	go run ./istiod/xds/xdsbench -clients 100 -workloads 10000 -services 1001
//
// The reference (DESIGN.md section 7): Istio's pilot-discovery syncs 100
// clients with 11,001 addresses in p50 2-5 s and delivers a change to all
// 100 in p50 ~120 ms, peaking at 0.7-1.2 GB RSS. Here the clients share the
// machine's cores with the server: -client=ztunnel runs ztunnel's own client
// and store, -client=raw decodes responses but keeps nothing, and
// -client=lite only scans the wire format, to show the server's part.
package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/istiod/xds"
	"github.com/ambit-mesh/ambit/istiod/xds/xdstest"
	"github.com/ambit-mesh/ambit/ztunnel/state"
	zxds "github.com/ambit-mesh/ambit/ztunnel/xds"
)

type config struct {
	clients, workloads, services, policies, changes int
	client                                          string
	debounce                                        time.Duration
	timeout                                         time.Duration
}

var window = flag.Int("window", 4<<20, "raw clients' HTTP/2 stream and connection window")

func main() {
	var c config
	serve := flag.Bool("serve", false, "internal: run the server side, driven over stdin")
	flag.IntVar(&c.clients, "clients", 100, "number of delta ADS clients")
	flag.IntVar(&c.workloads, "workloads", 10000, "workloads (Address resources)")
	flag.IntVar(&c.services, "services", 1001, "services (Address resources)")
	flag.IntVar(&c.policies, "policies", 100, "authorization policies")
	flag.IntVar(&c.changes, "changes", 30, "changes to propagate (alternately a workload and a policy)")
	flag.StringVar(&c.client, "client", "ztunnel", "client kind: ztunnel (ztunnel/xds into a state store), raw (decode the response, ACK) or lite (scan the wire format, ACK)")
	flag.DurationVar(&c.debounce, "debounce", xds.DefaultDebounce, "server debounce")
	flag.DurationVar(&c.timeout, "timeout", 5*time.Minute, "give up after this long")
	cpuprofile := flag.String("cpuprofile", "", "write the clients' process CPU profile here")
	flag.Parse()
	var err error
	if *serve && *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	if *cpuprofile != "" && !*serve {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "xdsbench:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "xdsbench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if *serve {
		err = runServer(c)
	} else {
		err = run(c)
	}
	if err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "xdsbench:", err)
		os.Exit(1)
	}
}

// change i: even i changes a workload, odd i a policy; rev is i+1.
func change(c config, i int) (typeURL, name string, mutate func(*xds.Resources)) {
	rev := i + 1
	if i%2 == 0 || c.policies == 0 {
		idx := (i * 7919) % c.workloads
		a := xdstest.Workload(idx, c.services, c.policies, rev)
		return xds.TypeAddress, xds.AddressKey(a), func(r *xds.Resources) { r.Addresses[xds.AddressKey(a)] = a }
	}
	p := xdstest.Policy((i*31)%c.policies, rev)
	return xds.TypeAuthorization, xds.AuthorizationKey(p), func(r *xds.Resources) { r.Authorizations[xds.AuthorizationKey(p)] = p }
}

// runServer is the child: it serves xDS and obeys commands on stdin
// ("change <i>", "stats", "quit"), answering one line each on stdout.
func runServer(c config) error {
	d, err := xdstest.Start(xdstest.Options{
		XDS:           xds.Options{Debounce: c.debounce, Logger: slog.New(slog.DiscardHandler)},
		ServerOptions: []grpc.ServerOption{grpc.MaxConcurrentStreams(1000)},
	})
	if err != nil {
		return err
	}
	mesh := xdstest.Mesh(c.workloads, c.services, c.policies)
	d.XDS.Set(mesh)
	d.XDS.Flush()
	fmt.Printf("ready %s %s\n", d.Addr, strconv.Quote(string(d.Authority.RootsPEM())))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		switch {
		case len(f) == 2 && f[0] == "change":
			i, err := strconv.Atoi(f[1])
			if err != nil {
				return err
			}
			_, _, mutate := change(c, i)
			mesh = xds.Resources{Addresses: maps.Clone(mesh.Addresses), Authorizations: maps.Clone(mesh.Authorizations)}
			mutate(&mesh)
			d.XDS.Set(mesh)
			fmt.Println("ok")
		case len(f) == 1 && f[0] == "stats":
			b, err := json.Marshal(d.XDS.Stats())
			if err != nil {
				return err
			}
			fmt.Println(string(b))
		case len(f) == 1 && f[0] == "quit":
			d.Stop()
			return nil
		}
	}
	d.Stop()
	return in.Err()
}

// server is the parent's handle on the child.
type server struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	addr string
	pool *x509.CertPool
}

func startServer(c config) (*server, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-serve", "-cpuprofile", os.Getenv("XDSBENCH_SERVER_PROFILE"),
		"-workloads", strconv.Itoa(c.workloads), "-services", strconv.Itoa(c.services),
		"-policies", strconv.Itoa(c.policies), "-debounce", c.debounce.String())
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, in: in, out: bufio.NewScanner(outR)}
	s.out.Buffer(make([]byte, 1<<20), 1<<20)
	line, err := s.line()
	if err != nil {
		return nil, err
	}
	f := strings.SplitN(line, " ", 3)
	if len(f) != 3 || f[0] != "ready" {
		return nil, fmt.Errorf("server said %q", line)
	}
	pemText, err := strconv.Unquote(f[2])
	if err != nil {
		return nil, err
	}
	s.addr = f[1]
	s.pool = x509.NewCertPool()
	s.pool.AppendCertsFromPEM([]byte(pemText))
	return s, nil
}

func (s *server) line() (string, error) {
	if !s.out.Scan() {
		if err := s.out.Err(); err != nil {
			return "", err
		}
		return "", io.ErrUnexpectedEOF
	}
	return s.out.Text(), nil
}

func (s *server) do(cmd string) (string, error) {
	if _, err := fmt.Fprintln(s.in, cmd); err != nil {
		return "", err
	}
	return s.line()
}

func (s *server) stop() {
	_, _ = fmt.Fprintln(s.in, "quit")
	_ = s.cmd.Wait()
}

// proc reads a process's peak and current RSS (MiB) and CPU seconds.
func proc(pid int) (hwm, rss, cpu float64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && (f[0] == "VmHWM:" || f[0] == "VmRSS:") {
			kb, _ := strconv.ParseFloat(f[1], 64)
			if f[0] == "VmHWM:" {
				hwm = kb / 1024
			} else {
				rss = kb / 1024
			}
		}
	}
	b, _ = os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if i := strings.LastIndexByte(string(b), ')'); i > 0 {
		f := strings.Fields(string(b)[i+1:])
		if len(f) > 13 {
			ut, _ := strconv.ParseFloat(f[11], 64)
			st, _ := strconv.ParseFloat(f[12], 64)
			cpu = (ut + st) / 100 // USER_HZ is 100 on Linux
		}
	}
	return hwm, rss, cpu
}

// client is one benchmark client of either kind.
type client interface {
	synced() <-chan struct{}
	// signal receives a (coalesced) signal after every update.
	signal() <-chan struct{}
	// has reports whether change (typeURL, name, rev) has arrived since t.
	has(typeURL, name string, rev int, since time.Time) bool
	close()
}

type ztunnelClient struct {
	c      *zxds.Client
	store  *state.Store
	sig    <-chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

func newZtunnel(s *server, i int) (client, error) {
	log := slog.New(slog.DiscardHandler)
	store := state.New(state.Options{Logger: log})
	c, err := zxds.New(zxds.Options{
		Address: s.addr, ServerName: xdstest.ServerName, RootCAs: s.pool,
		NodeID: fmt.Sprintf("ztunnel~10.1.0.%d~ztunnel-%d.istio-system~istio-system.svc.cluster.local", i, i),
		Store:  store, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	sig, _ := store.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	z := &ztunnelClient{c: c, store: store, sig: sig, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(z.done)
		_ = c.Run(ctx)
	}()
	return z, nil
}

func (z *ztunnelClient) synced() <-chan struct{} { return z.c.Synced() }
func (z *ztunnelClient) signal() <-chan struct{} { return z.sig }
func (z *ztunnelClient) close() {
	z.cancel()
	<-z.done
	_ = z.c.Close()
}

func (z *ztunnelClient) has(typeURL, name string, rev int, _ time.Time) bool {
	v := z.store.Load()
	if typeURL == xds.TypeAddress {
		return v.WorkloadByUID(name).GetCanonicalRevision() == fmt.Sprintf("v%d", rev)
	}
	p := v.Policy(name)
	if p == nil {
		return false
	}
	exact := p.GetGroups()[0].GetRules()[0].GetMatches()[0].GetPrincipals()[0].GetExact()
	return strings.HasSuffix(exact, fmt.Sprintf("/sa/client-%d", rev))
}

// rawClient receives and ACKs, recording when each name last arrived.
type rawClient struct {
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	sync   chan struct{}
	sig    chan struct{}
	mu     sync.Mutex
	seen   map[string]time.Time
}

func newRaw(s *server, i int) (client, error) {
	conn, err := grpc.NewClient(s.addr,
		grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(s.pool, xdstest.ServerName)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(512<<20)),
		grpc.WithInitialWindowSize(int32(*window)), grpc.WithInitialConnWindowSize(int32(*window)))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &rawClient{conn: conn, cancel: cancel, sync: make(chan struct{}), sig: make(chan struct{}, 1), seen: map[string]time.Time{}}
	go r.run(ctx, i)
	return r, nil
}

func (r *rawClient) run(ctx context.Context, i int) {
	for ctx.Err() == nil {
		st, err := discovery.NewAggregatedDiscoveryServiceClient(r.conn).DeltaAggregatedResources(ctx)
		if err != nil {
			time.Sleep(100 * time.Millisecond) // retry pacing, not readiness
			continue
		}
		for j, t := range []string{xds.TypeAddress, xds.TypeAuthorization} {
			req := &discovery.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: []string{"*"}}
			if j == 0 {
				req.Node = nodeProto(fmt.Sprintf("raw-%d", i))
			}
			_ = st.Send(req)
		}
		got := map[string]bool{}
		for {
			resp, err := st.Recv()
			if err != nil {
				time.Sleep(100 * time.Millisecond) // retry pacing, not readiness
				break
			}
			now := time.Now()
			r.mu.Lock()
			for _, res := range resp.GetResources() {
				r.seen[res.GetName()] = now
			}
			r.mu.Unlock()
			_ = st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
			got[resp.GetTypeUrl()] = true
			if len(got) == 2 {
				select {
				case <-r.sync:
				default:
					close(r.sync)
				}
			}
			select {
			case r.sig <- struct{}{}:
			default:
			}
		}
	}
}

func (r *rawClient) synced() <-chan struct{} { return r.sync }
func (r *rawClient) signal() <-chan struct{} { return r.sig }
func (r *rawClient) close()                  { r.cancel(); _ = r.conn.Close() }
func (r *rawClient) has(_, name string, _ int, since time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[name].After(since)
}

func nodeProto(id string) *core.Node { return &core.Node{Id: id} }

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(p * float64(len(s)-1))
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func run(c config) error {
	mesh := xdstest.Mesh(c.workloads, c.services, c.policies)
	size := 0
	for _, a := range mesh.Addresses {
		size += proto.Size(a)
	}
	for _, p := range mesh.Authorizations {
		size += proto.Size(p)
	}
	fmt.Printf("xdsbench: %d clients (%s), %d Address resources (%d workloads, %d services), %d policies, %.2f MB encoded per client; GOMAXPROCS %d, debounce %v\n",
		c.clients, c.client, len(mesh.Addresses), c.workloads, c.services, len(mesh.Authorizations), float64(size)/1e6, runtime.GOMAXPROCS(0), c.debounce)
	mesh = xds.Resources{}

	s, err := startServer(c)
	if err != nil {
		return err
	}
	defer s.stop()
	pid := s.cmd.Process.Pid
	hwm0, rss0, cpu0 := proc(pid)
	fmt.Printf("server idle with the state: RSS %.0f MiB (peak %.0f MiB), CPU %.2f s so far\n", rss0, hwm0, cpu0)

	var newClient func(*server, int) (client, error)
	switch c.client {
	case "ztunnel":
		newClient = newZtunnel
	case "raw":
		newClient = newRaw
	case "lite":
		newClient = newLite
	default:
		return fmt.Errorf("-client %q: want ztunnel, raw or lite", c.client)
	}
	deadline := time.Now().Add(c.timeout)
	t0 := time.Now()
	clients := make([]client, c.clients)
	for i := range clients {
		if clients[i], err = newClient(s, i); err != nil {
			return err
		}
	}
	defer func() {
		for _, cl := range clients {
			cl.close()
		}
	}()
	syncTimes := make([]time.Duration, len(clients))
	var wg sync.WaitGroup
	var timedOut sync.Once
	failed := false
	for i, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-cl.synced():
				syncTimes[i] = time.Since(t0)
			case <-time.After(time.Until(deadline)):
				timedOut.Do(func() { failed = true })
			}
		}()
	}
	wg.Wait()
	if failed {
		return fmt.Errorf("not every client synced within %v", c.timeout)
	}
	all := time.Since(t0)
	hwm1, rss1, cpu1 := proc(pid)
	fmt.Printf("initial sync: p50 %s, p99 %s, max %s; all %d synced in %s; server CPU %.2f s, RSS %.0f MiB (peak %.0f MiB)\n",
		ms(percentile(syncTimes, 0.5)), ms(percentile(syncTimes, 0.99)), ms(slices.Max(syncTimes)), len(clients), ms(all), cpu1-cpu0, rss1, hwm1)

	var lat []time.Duration
	var perChange []time.Duration // time until the last client had it
	for i := range c.changes {
		typeURL, name, _ := change(c, i)
		start := time.Now()
		if _, err := s.do(fmt.Sprintf("change %d", i)); err != nil {
			return err
		}
		got := make([]time.Duration, len(clients))
		for j, cl := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !cl.has(typeURL, name, i+1, start) {
					select {
					case <-cl.signal():
					case <-time.After(time.Until(deadline)):
						timedOut.Do(func() { failed = true })
						return
					}
				}
				got[j] = time.Since(start)
			}()
		}
		wg.Wait()
		if failed {
			return fmt.Errorf("change %d did not reach every client within %v", i, c.timeout)
		}
		lat = append(lat, got...)
		perChange = append(perChange, slices.Max(got))
	}
	hwm2, rss2, cpu2 := proc(pid)
	stats, err := s.do("stats")
	if err != nil {
		return err
	}
	if c.changes > 0 {
		fmt.Printf("change propagation (Set to every client's store, incl. %v debounce), %d changes x %d clients: p50 %s, p99 %s, max %s; to all clients: p50 %s, p99 %s; server CPU %.3f s per change\n",
			c.debounce, c.changes, len(clients), ms(percentile(lat, 0.5)), ms(percentile(lat, 0.99)), ms(slices.Max(lat)),
			ms(percentile(perChange, 0.5)), ms(percentile(perChange, 0.99)), (cpu2-cpu1)/float64(c.changes))
	}
	phwm, prss, pcpu := proc(os.Getpid())
	fmt.Printf("server: RSS %.0f MiB, peak %.0f MiB, CPU %.2f s total; clients' process: RSS %.0f MiB, peak %.0f MiB, CPU %.2f s\n",
		rss2, hwm2, cpu2, prss, phwm, pcpu)
	fmt.Printf("server stats: %s\n", stats)
	return nil
}
