package local

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

func TestProcTableRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "procs.json")
	tab, err := loadProcs(path)
	if err != nil || len(tab.Procs) != 0 {
		t.Fatalf("missing file: %v %v", tab, err)
	}
	_, start, err := procStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	self := Proc{Name: "self", Kind: KindPod, Pod: "demo/a", PID: os.Getpid(), StartTime: start}
	tab.Procs = append(tab.Procs, self, Proc{Name: "gone", PID: os.Getpid(), StartTime: start + 1})
	if err := tab.save(path); err != nil {
		t.Fatal(err)
	}
	got, err := loadProcs(path)
	if err != nil || len(got.Procs) != 2 {
		t.Fatalf("%v %v", got, err)
	}
	if !got.Procs[0].Alive() {
		t.Error("this process is not alive")
	}
	if got.Procs[1].Alive() {
		t.Error("a reused pid (other start time) counts as alive")
	}
	got.remove(func(p Proc) bool { return p.Name == "gone" })
	if len(got.Procs) != 1 || got.Procs[0].Name != "self" {
		t.Errorf("after remove: %+v", got.Procs)
	}
}

// envListen makes the test binary, re-executed, listen on that TCP address
// and sleep (exit 3 when it cannot bind): a stand-in daemon with a
// readiness port.
const envListen = "AMBIT_LOCAL_TEST_LISTEN"

func TestMain(m *testing.M) {
	if addr := os.Getenv(envListen); addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		defer l.Close()
		time.Sleep(5 * time.Minute)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// waitExec waits until p runs its program (nsenter has entered the
// namespace and executed it).
func waitExec(t *testing.T, p Proc) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if argv := procCmdline(p.PID); len(argv) > 0 && argv[0] == p.Command[0] {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never ran %s: %q", p.PID, p.Command[0], procCmdline(p.PID))
		}
		time.Sleep(10 * time.Millisecond) // polling for exec; no event to wait on
	}
}

// launchListener starts the test binary listening on 127.0.0.1:port in ns.
func launchListener(t *testing.T, ns, name string, port int, dir string) (Proc, <-chan struct{}) {
	t.Helper()
	p, reaped, err := Launch(ns, os.Args[0], []string{"-test.run=^$"}, []string{fmt.Sprintf("%s=0.0.0.0:%d", envListen, port)}, filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	p.Name, p.Kind, p.Node = name, KindZtunnel, "t"
	t.Cleanup(func() { StopProcs([]Proc{p}, time.Second) })
	return p, reaped
}

// TestReadinessAnsweredByOrphan: a readiness answer from another process
// on the same port (an untracked one) is not the started process's: it
// held the port first, the started one exits on "address already in use",
// and wait reports that instead of "ready".
func TestReadinessAnsweredByOrphan(t *testing.T) {
	netnstest.RequireRoot(t)
	const nsName = "ambt-creds-orphan"
	netnstest.New(t, nsName)
	dir := t.TempDir()
	orphan, _ := launchListener(t, nsName, "orphan", ZtunnelReadyPort, dir)
	e := &Engine{Paths: Paths{Dir: dir}, ReadyTimeout: 20 * time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for e.answeredBy(orphan) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("the listener never listened: %v", e.answeredBy(orphan))
		}
		time.Sleep(20 * time.Millisecond) // polling for the child's listen; no event to wait on
	}

	// A live process that does not hold the port: the answer is not its.
	sleep, err := e.FindBinary("sleep")
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := Launch(nsName, sleep, []string{"300"}, nil, filepath.Join(dir, "sleep.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopProcs([]Proc{other}, time.Second) })
	waitExec(t, other)
	other.Name, other.Kind = "ztunnel-t", KindZtunnel
	err = e.answeredBy(other)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("TCP port %d is served by pid %d", ZtunnelReadyPort, orphan.PID)) {
		t.Fatalf("answeredBy(a process without the port) = %v, want served by the orphan pid %d", err, orphan.PID)
	}

	// The started process fails to bind; a check that the orphan answers
	// (always true here) is not "ready".
	started, reaped := launchListener(t, nsName, "ztunnel-t", ZtunnelReadyPort, dir)
	s := &session{e: e, procs: &procTable{Procs: []Proc{started}}, reaped: map[int]<-chan struct{}{started.PID: reaped}}
	err = s.wait(context.Background(), "ztunnel-t", func(context.Context) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
		t.Fatalf("wait = %v, want: exited before it was ready", err)
	}
}

// TestRecordFailureKillsProcess: with the state dir full (a 64 KiB tmpfs),
// Start cannot record the process it launched: it kills it, says to free
// space, leaves procs.json as it was, and no process survives in the
// namespace. With space again, Start works.
func TestRecordFailureKillsProcess(t *testing.T) {
	netnstest.RequireRoot(t)
	const nsName = "ambt-creds-full"
	netnstest.New(t, nsName)
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=64k"); err != nil {
		netnstest.SkipOrFail(t, "mounting a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", mnt, err)
		}
	})
	e := &Engine{Paths: Paths{Dir: filepath.Join(mnt, "state")}, ReadyTimeout: 10 * time.Second}
	sleep, err := e.FindBinary("sleep")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(e.Paths.Logs(), 0o755); err != nil {
		t.Fatal(err)
	}
	rec := Proc{Name: "pod-t-sleeper", Kind: KindPod, Pod: "t/sleeper", PID: 1 << 22, Netns: nsName,
		Command: []string{sleep, "301"}, Log: e.Paths.Log("pod-t-sleeper"), Stopped: true}
	if err := (&procTable{Procs: []Proc{rec}}).save(e.Paths.Procs()); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(e.Paths.Procs())
	if err != nil {
		t.Fatal(err)
	}
	fill := filepath.Join(mnt, "fill")
	f, err := os.Create(fill)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := f.Write(make([]byte, 4096)); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()
	id, err := netns.IDOfPath(netns.Path(nsName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopProcs(ProcsInNetns(map[netns.ID]bool{id: true}), time.Second) })

	err = e.Start(context.Background(), "pod-t-sleeper")
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "it was stopped so that it does not run untracked: free space in "+e.Paths.Dir) {
		t.Fatalf("Start with a full state dir = %v, want ENOSPC saying to free space in %s", err, e.Paths.Dir)
	}
	if left := ProcsInNetns(map[netns.ID]bool{id: true}); len(left) > 0 {
		t.Fatalf("processes left in %s after the failed start: %+v", nsName, left)
	}
	if after, _ := os.ReadFile(e.Paths.Procs()); string(after) != string(before) {
		t.Errorf("procs.json changed by the failed start:\n%s", after)
	}

	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background(), "pod-t-sleeper"); err != nil {
		t.Fatalf("Start with space: %v", err)
	}
	tab, err := loadProcs(e.Paths.Procs())
	if err != nil || len(tab.Procs) != 1 || !tab.Procs[0].Alive() || tab.Procs[0].Stopped {
		t.Fatalf("after start: %+v %v", tab, err)
	}
	if err := e.Stop(context.Background(), "pod-t-sleeper"); err != nil {
		t.Fatal(err)
	}
}

// TestStartRefusesUnrecorded: a process of the same program running
// unrecorded in the process's namespace makes Start refuse, naming its pid
// and how to stop it; nothing is started.
func TestStartRefusesUnrecorded(t *testing.T) {
	netnstest.RequireRoot(t)
	const nsName = "ambt-creds-unrec"
	netnstest.New(t, nsName)
	e := &Engine{Paths: Paths{Dir: t.TempDir()}, ReadyTimeout: 10 * time.Second}
	sleep, err := e.FindBinary("sleep")
	if err != nil {
		t.Fatal(err)
	}
	orphan, _, err := Launch(nsName, sleep, []string{"302"}, nil, e.Paths.Log("orphan"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopProcs([]Proc{orphan}, time.Second) })
	waitExec(t, orphan)
	rec := Proc{Name: "pod-t-sleeper", Kind: KindPod, Pod: "t/sleeper", PID: 1 << 22, Netns: nsName,
		Command: []string{sleep, "303"}, Log: e.Paths.Log("pod-t-sleeper"), Stopped: true}
	if err := (&procTable{Procs: []Proc{rec}}).save(e.Paths.Procs()); err != nil {
		t.Fatal(err)
	}
	err = e.Start(context.Background(), "pod-t-sleeper")
	if !errors.Is(err, ErrUnrecorded) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d (%s 302)", orphan.PID, sleep)) ||
		!strings.Contains(err.Error(), fmt.Sprintf("kill %d", orphan.PID)) {
		t.Fatalf("Start = %v, want ErrUnrecorded naming pid %d and how to stop it", err, orphan.PID)
	}
	id, _ := netns.IDOfPath(netns.Path(nsName))
	if n := len(ProcsInNetns(map[netns.ID]bool{id: true})); n != 1 {
		t.Errorf("%d processes in %s, want only the orphan", n, nsName)
	}
}
