package local

import (
	"bytes"
	"context"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/netns"
	"github.com/ambit-mesh/ambit/pkg/netns/netnstest"
)

func TestNodeConflist(t *testing.T) {
	if !bytes.Equal(NodeConflist(NetworkName, PodCIDR(2), "/s/nodes/n/ipam"), Conflist(2, "/s/nodes/n/ipam")) {
		t.Error("Conflist differs from NodeConflist with local mode's parameters")
	}
	b := string(NodeConflist("other", netip.MustParsePrefix("10.9.3.7/24"), "/d"))
	for _, want := range []string{`"name": "other"`, `"subnet": "10.9.3.0/24"`, `"gateway": "10.9.3.1"`, `"dataDir": "/d"`} {
		if !bytes.Contains([]byte(b), []byte(want)) {
			t.Errorf("conflist lacks %s:\n%s", want, b)
		}
	}
}

// TestCreateNodeNetns builds a backbone and two nodes with other names and
// addresses than local mode's, and connects across with routes in place, then
// checks ProcsInNetns finds a process started with Launch.
func TestCreateNodeNetns(t *testing.T) {
	netnstest.RequireRoot(t)
	const bb, n1, n2 = "ambit-t-ctl-bb", "ambit-t-ctl-n1", "ambit-t-ctl-n2"
	for _, n := range []string{n2, n1, bb} {
		t.Cleanup(func() { _ = netns.Delete(n) })
	}
	if err := CreateBridgeNetns(bb, "br9", netip.MustParsePrefix("192.168.77.1/24")); err != nil {
		t.Fatal(err)
	}
	pods := netip.MustParsePrefix("10.77.2.0/24")
	if err := CreateNodeNetns(n1, bb, "br9", "vt1", netip.MustParsePrefix("192.168.77.11/24"),
		[]Route{{Dst: pods, Via: netip.MustParseAddr("192.168.77.12")}}); err != nil {
		t.Fatal(err)
	}
	if err := CreateNodeNetns(n2, bb, "br9", "vt2", netip.MustParsePrefix("192.168.77.12/24"), nil); err != nil {
		t.Fatal(err)
	}
	// TCP across the backbone (no ping here): n2 listens, n1 and the
	// backbone dial.
	n2ns, err := netns.OpenName(n2)
	if err != nil {
		t.Fatal(err)
	}
	defer n2ns.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ln, err := netns.ListenIn(ctx, n2ns, "tcp", "192.168.77.12:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for _, from := range []string{n1, bb} {
		ns, err := netns.OpenName(from)
		if err != nil {
			t.Fatal(err)
		}
		c, err := netns.DialIn(ctx, ns, "tcp", ln.Addr().String())
		ns.Close()
		if err != nil {
			t.Errorf("dialing node %s from %s: %v", ln.Addr(), from, err)
			continue
		}
		c.Close()
	}
	out, err := exec.Command("nsenter", "--net="+netns.Path(n1), "--", "ip", "route", "get", "10.77.2.5").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("via 192.168.77.12")) {
		t.Errorf("route to the pod range: %v\n%s", err, out)
	}

	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	p, reaped, err := Launch(n2, sleep, []string{"300"}, nil, t.TempDir()+"/sleep.log")
	if err != nil {
		t.Fatal(err)
	}
	id, err := netns.IDOfPath(netns.Path(n2))
	if err != nil {
		t.Fatal(err)
	}
	// nsenter execs sleep after entering: poll until the pid is in n2.
	deadline := time.Now().Add(5 * time.Second)
	for {
		found := ProcsInNetns(map[netns.ID]bool{id: true})
		if len(found) == 1 && found[0].PID == p.PID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ProcsInNetns = %+v, want pid %d", found, p.PID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	StopProcs([]Proc{p}, time.Second)
	select {
	case <-reaped:
	case <-time.After(5 * time.Second):
		t.Fatal("process not reaped after StopProcs")
	}
}
