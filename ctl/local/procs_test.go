package local

import (
	"os"
	"path/filepath"
	"testing"
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
