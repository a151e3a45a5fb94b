package netns_test

import (
	"context"
	"errors"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

const prefix = "ambit-t-netns-"

// startID is the namespace the test binary started in, read before any test
// could move a thread.
var startID netns.ID

func TestMain(m *testing.M) {
	runtime.LockOSThread()
	startID, _ = threadID()
	runtime.UnlockOSThread()
	netnstest.Main(m, prefix)
}

func hostID(t *testing.T) netns.ID {
	t.Helper()
	if startID == (netns.ID{}) {
		t.Fatal("could not read the starting namespace")
	}
	return startID
}

func threadID() (netns.ID, error) { return netns.IDOfPath("/proc/thread-self/ns/net") }

func TestValidName(t *testing.T) {
	for _, name := range []string{"", ".", "..", "a/b", "x\x00y"} {
		if _, err := netns.Create(name); !errors.Is(err, netns.ErrInvalidName) {
			t.Errorf("Create(%q) = %v, want ErrInvalidName", name, err)
		}
		if err := netns.Delete(name); !errors.Is(err, netns.ErrInvalidName) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidName", name, err)
		}
	}
}

func TestOpenRejectsOtherFiles(t *testing.T) {
	if _, err := netns.Open("/proc/self/status"); err == nil {
		t.Fatal("Open of a non-namespace file succeeded")
	}
	if _, err := netns.Open("/nonexistent/ns"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open of a missing file = %v, want ErrNotExist", err)
	}
}

func TestCreateDoDelete(t *testing.T) {
	netnstest.RequireRoot(t)
	name := prefix + "life"
	ns := netnstest.New(t, name)
	host := hostID(t)

	id, err := netns.IDOf(ns)
	if err != nil {
		t.Fatal(err)
	}
	if id == host {
		t.Fatal("new namespace has the host's ID")
	}
	if _, err := netns.Create(name); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second Create = %v, want ErrExist", err)
	}
	byName, err := netns.OpenName(name)
	if err != nil {
		t.Fatal(err)
	}
	if id2, _ := netns.IDOf(byName); id2 != id {
		t.Fatalf("OpenName ID = %v, want %v", id2, id)
	}
	byName.Close()

	hostLinks, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	// A host port that is taken there must be free inside.
	hostLn, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	port := hostLn.Addr().(*net.TCPAddr).Port

	var nsLinks []net.Interface
	err = netns.Do(ns, func() error {
		if cur, err := threadID(); err != nil || cur != id {
			return errors.New("thread is not in the target namespace inside Do")
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		nsLinks, err = net.Interfaces()
		return err
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if len(nsLinks) != 1 || nsLinks[0].Name != "lo" {
		t.Fatalf("links in new namespace = %v, want only lo", nsLinks)
	}
	if len(hostLinks) == len(nsLinks) && hostLinks[0].Index == nsLinks[0].Index && len(hostLinks) == 1 {
		t.Log("host has only lo; the link-list comparison is weak here")
	}

	ctx := context.Background()
	ln, err := netns.ListenIn(ctx, ns, "tcp4", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("listening inside on the host's taken port %d: %v", port, err)
	}
	defer ln.Close()
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, err = c.Write([]byte("in"))
			c.Close()
		}
		accepted <- err
	}()
	c, err := netns.DialIn(ctx, ns, "tcp4", ln.Addr().String())
	if err != nil {
		t.Fatalf("DialIn: %v", err)
	}
	buf := make([]byte, 2)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err != nil || string(buf) != "in" {
		t.Fatalf("read %q, %v; want \"in\"", buf, err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}

	if err := netns.Delete(name); err != nil {
		t.Fatal(err)
	}
	if err := netns.Delete(name); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if _, err := os.Stat(netns.Path(name)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after Delete, stat %s = %v", netns.Path(name), err)
	}
	if left, _ := netns.List(name); len(left) != 0 {
		t.Fatalf("after Delete, List = %v", left)
	}
}

func TestDoErrorAndPanic(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, prefix+"err")
	host := hostID(t)
	sentinel := errors.New("boom")
	if err := netns.Do(ns, func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Fatalf("Do = %v, want the callback's error", err)
	}
	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Fatalf("recovered %v, want kaboom", r)
			}
		}()
		_ = netns.Do(ns, func() error { panic("kaboom") })
		t.Fatal("Do did not re-panic")
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if id, err := threadID(); err != nil || id != host {
		t.Fatalf("after Do, this thread is in %v (%v), want host %v", id, err, host)
	}
}

// TestDoConcurrent checks that many concurrent Do calls never leave a thread
// that runs other goroutines in the target namespace.
func TestDoConcurrent(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, prefix+"conc")
	target, err := netns.IDOf(ns)
	if err != nil {
		t.Fatal(err)
	}
	host := hostID(t)

	const (
		workers  = 16
		perW     = 200
		checkers = 4
		fresh    = 64
	)
	var (
		wg, cg sync.WaitGroup
		done   = make(chan struct{})
		errs   = make(chan error, workers+checkers+fresh)
	)
	for range checkers {
		cg.Add(1)
		go func() {
			defer cg.Done()
			for i := 0; i < 1_000_000; i++ { // bounded; normally stops at done
				select {
				case <-done:
					return
				default:
				}
				id, err := threadID()
				if err != nil || id != host {
					errs <- errors.New("an unlocked goroutine ran in a non-host namespace")
					return
				}
				runtime.Gosched()
			}
		}()
	}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perW {
				err := netns.Do(ns, func() error {
					id, err := threadID()
					if err != nil {
						return err
					}
					if id != target {
						return errors.New("Do callback ran outside the target namespace")
					}
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	cg.Wait()
	for range fresh {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if id, err := threadID(); err != nil || id != host {
				errs <- errors.New("a fresh goroutine's thread is not in the host namespace")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if id, err := netns.IDOfPath("/proc/self/ns/net"); err != nil || id != host {
		t.Errorf("main thread is in %v (%v), want host %v", id, err, host)
	}
}

func TestDoRejectsNonNetNS(t *testing.T) {
	netnstest.RequireRoot(t)
	f, err := os.Open("/proc/self/ns/uts")
	if err != nil {
		netnstest.SkipOrFail(t, "no UTS namespace to pass to Do: %v", err)
	}
	defer f.Close()
	called := false
	err = netns.Do(f, func() error { called = true; return nil })
	if err == nil || called {
		t.Fatalf("Do on a UTS namespace = %v, called %v; want an error and no call", err, called)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if id, _ := threadID(); id != hostID(t) {
		t.Fatal("thread left in another namespace")
	}
}
