package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

func TestProcTableFind(t *testing.T) {
	tab := &procTable{Procs: []Proc{{Name: "istiod"}, {Name: "ztunnel-node-a"}}}
	if i, err := tab.find("ztunnel-node-a"); i != 1 || err != nil {
		t.Errorf("find = %d, %v", i, err)
	}
	_, err := tab.find("ztunnel-node-z")
	if !errors.Is(err, ErrNoProcess) || !strings.Contains(err.Error(), "istiod, ztunnel-node-a") {
		t.Errorf("unknown name: %v, want ErrNoProcess listing the names", err)
	}
}

// TestStopStart runs the bookkeeping of stop and start on a real process
// (sleep) in a namespace of its own: stop kills it and records it stopped,
// start launches the recorded command again with its environment and
// clears the mark, and both are no-ops the second time.
func TestStopStart(t *testing.T) {
	netnstest.RequireRoot(t)
	const nsName = "ambit-t-ctl-stopstart"
	netnstest.New(t, nsName)
	sleep, err := (&Engine{}).FindBinary("sleep")
	if err != nil {
		t.Fatal(err)
	}
	e := &Engine{Paths: Paths{Dir: t.TempDir()}}
	p, _, err := Launch(nsName, sleep, []string{"300"}, []string{"MARK=1"}, e.Paths.Log("pod-t-sleeper"))
	if err != nil {
		t.Fatal(err)
	}
	p.Name, p.Kind, p.Pod = "pod-t-sleeper", KindPod, "t/sleeper"
	tab := &procTable{Procs: []Proc{{Name: "istiod", Kind: KindIstiod}, p}}
	if err := tab.save(e.Paths.Procs()); err != nil {
		t.Fatal(err)
	}
	load := func() Proc {
		t.Helper()
		tab, err := loadProcs(e.Paths.Procs())
		if err != nil || len(tab.Procs) != 2 {
			t.Fatalf("procs.json: %+v %v", tab, err)
		}
		return tab.Procs[1]
	}
	t.Cleanup(func() { StopProcs([]Proc{load()}, e.stopGrace()) })
	ctx := context.Background()

	if err := e.Stop(ctx, "nope"); !errors.Is(err, ErrNoProcess) {
		t.Errorf("stop of an unknown name: %v", err)
	}
	for range 2 {
		if err := e.Stop(ctx, "pod-t-sleeper"); err != nil {
			t.Fatal(err)
		}
		got := load()
		if !got.Stopped || got.PID != p.PID || p.Alive() {
			t.Fatalf("after stop: %+v, old process alive %v", got, p.Alive())
		}
	}
	st := procStatus(ctx, e.Paths, load())
	if st.Alive || !st.Stopped || !strings.Contains(st.Detail, "ambitctl local start pod-t-sleeper") {
		t.Errorf("status of a stopped process: %+v", st)
	}

	if err := e.Start(ctx, "pod-t-sleeper"); err != nil {
		t.Fatal(err)
	}
	got := load()
	if got.Stopped || got.PID == p.PID || !got.Alive() || got.Netns != nsName || got.Pod != "t/sleeper" {
		t.Fatalf("after start: %+v alive %v", got, got.Alive())
	}
	// Right after fork the child still shows the parent's environment; poll
	// until it has exec'd.
	var env []byte
	deadline := time.Now().Add(5 * time.Second)
	for {
		env, err = os.ReadFile(filepath.Join("/proc", strconv.Itoa(got.PID), "environ"))
		if err == nil && strings.Contains(string(env), "MARK=1") || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil || !strings.Contains(string(env), "MARK=1") {
		t.Errorf("restarted process lacks its recorded environment (%v)", err)
	}
	if err := e.Start(ctx, "pod-t-sleeper"); err != nil {
		t.Fatal(err)
	}
	if again := load(); again.PID != got.PID {
		t.Errorf("start of a running process relaunched it: pid %d -> %d", got.PID, again.PID)
	}
}

// TestLockFileRemoved: down removes the lock file while holding it; the
// next command locks a new file instead of the removed one.
func TestLockFileRemoved(t *testing.T) {
	e := &Engine{Paths: Paths{Dir: filepath.Join(t.TempDir(), "state")}}
	unlock, err := e.lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := e.lock(); err == nil || !strings.Contains(err.Error(), "another ambitctl local command") {
		t.Fatalf("second lock while held: %v", err)
	}
	if err := os.Remove(e.Paths.Lock()); err != nil {
		t.Fatal(err)
	}
	unlock2, err := e.lock()
	if err != nil {
		t.Fatalf("lock after the file was removed: %v", err)
	}
	unlock2()
}
