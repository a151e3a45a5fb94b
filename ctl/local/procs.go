package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/pkg/netns"
)

// Process kinds recorded in procs.json.
const (
	KindIstiod  = "istiod"
	KindAgent   = "cni-agent"
	KindZtunnel = "ztunnel"
	KindPod     = "pod"
)

// Proc is one process local mode started. PID and StartTime (clock ticks
// after boot, /proc/<pid>/stat field 22) together identify it even after
// the PID is reused.
type Proc struct {
	Name      string   `json:"name"`
	Kind      string   `json:"kind"`
	Node      string   `json:"node,omitempty"`
	Pod       string   `json:"pod,omitempty"` // namespace/name
	PID       int      `json:"pid"`
	StartTime uint64   `json:"startTime"`
	Netns     string   `json:"netns"`
	Command   []string `json:"command"`
	// Env is what launch added to the environment; start reuses it.
	Env []string `json:"env,omitempty"`
	Log string   `json:"log"`
	// Stopped is set by `ambitctl local stop` and cleared by start: the
	// process is down on purpose.
	Stopped bool `json:"stopped,omitempty"`
}

// procTable is procs.json.
type procTable struct {
	Procs []Proc `json:"procs"`
}

func loadProcs(path string) (*procTable, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &procTable{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading process table: %w", err)
	}
	var t procTable
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &t, nil
}

func (t *procTable) save(path string) error {
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'), 0o644)
}

// find returns the index of the process called name, or an error naming
// the processes there are.
func (t *procTable) find(name string) (int, error) {
	names := make([]string, 0, len(t.Procs))
	for i, p := range t.Procs {
		if p.Name == name {
			return i, nil
		}
		names = append(names, p.Name)
	}
	return -1, fmt.Errorf("%w: %q; the processes are: %s", ErrNoProcess, name, strings.Join(names, ", "))
}

// remove drops the processes for which drop is true.
func (t *procTable) remove(drop func(Proc) bool) {
	out := t.Procs[:0]
	for _, p := range t.Procs {
		if !drop(p) {
			out = append(out, p)
		}
	}
	t.Procs = out
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// procStat returns the state letter and start time of pid.
func procStat(pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: split
	// after its last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	return f[0][0], start, err
}

// Alive reports whether the process is still the one recorded and has not
// exited (a zombie counts as exited).
func (p Proc) Alive() bool {
	st, start, err := procStat(p.PID)
	return err == nil && start == p.StartTime && st != 'Z' && st != 'X'
}

// Launch starts bin in the named network namespace through nsenter, as its
// own process group, output appended to logPath, env added to this
// process's environment. reaped is closed when the process has exited and
// been reaped by this process. The Proc's Name and Kind are left to the
// caller. The e2e Kubernetes test node uses it too.
func Launch(ns string, bin string, args, env []string, logPath string) (Proc, <-chan struct{}, error) {
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return Proc{}, nil, fmt.Errorf("nsenter not found (Debian package util-linux): %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return Proc{}, nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return Proc{}, nil, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s: starting in %s: %s %s\n", time.Now().Format(time.RFC3339), ns, bin, strings.Join(args, " "))
	cmd := exec.Command(nsenter, append([]string{"--net=" + netns.Path(ns), "--", bin}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return Proc{}, nil, fmt.Errorf("starting %s in %s: %w", bin, ns, err)
	}
	reaped := make(chan struct{})
	go func() { _ = cmd.Wait(); close(reaped) }()
	_, start, err := procStat(cmd.Process.Pid)
	if err != nil {
		select {
		case <-reaped:
			return Proc{}, nil, fmt.Errorf("%s exited at once; see %s", bin, logPath)
		default:
			return Proc{}, nil, fmt.Errorf("reading start time of %s: %w", bin, err)
		}
	}
	return Proc{PID: cmd.Process.Pid, StartTime: start, Netns: ns, Command: append([]string{bin}, args...), Env: env, Log: logPath}, reaped, nil
}

// StopProcs sends SIGTERM to the process group of each live process,
// waits up to grace for them to exit, then SIGKILLs what is left.
func StopProcs(procs []Proc, grace time.Duration) {
	var live []Proc
	for _, p := range procs {
		if p.Alive() {
			_ = syscall.Kill(-p.PID, syscall.SIGTERM)
			_ = syscall.Kill(p.PID, syscall.SIGTERM)
			live = append(live, p)
		}
	}
	deadline := time.Now().Add(grace)
	for len(live) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // polling for exit; no event to wait on for a non-child
		next := live[:0]
		for _, p := range live {
			if p.Alive() {
				next = append(next, p)
			}
		}
		live = next
	}
	for _, p := range live {
		_ = syscall.Kill(-p.PID, syscall.SIGKILL)
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
	deadline = time.Now().Add(2 * time.Second)
	for _, p := range live {
		for p.Alive() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// ProcsInNetns returns the processes whose network namespace is one of ids:
// how down finds processes of a run whose procs.json is gone (and how the
// e2e test node finds its leftovers).
func ProcsInNetns(ids map[netns.ID]bool) []Proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []Proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		id, err := netns.IDOfPath("/proc/" + e.Name() + "/ns/net")
		if err != nil || !ids[id] {
			continue
		}
		_, start, err := procStat(pid)
		if err != nil {
			continue
		}
		out = append(out, Proc{Name: "leftover", PID: pid, StartTime: start})
	}
	return out
}

// ErrUnrecorded is returned by Start when a process of the same role runs
// without being recorded in procs.json.
var ErrUnrecorded = errors.New("a process local mode does not track is running")

// recordStarted saves t, which holds p, the process just launched, to
// path. When that fails p is killed and reaped (reaped closes when it has
// been) before the error is returned: a process that is not recorded would
// run untracked, unseen by status, stop and down, holding its ports, and
// answer the readiness checks of the next start.
func recordStarted(t *procTable, path string, p Proc, reaped <-chan struct{}) error {
	err := t.save(path)
	if err == nil {
		return nil
	}
	_ = syscall.Kill(-p.PID, syscall.SIGKILL)
	_ = syscall.Kill(p.PID, syscall.SIGKILL)
	dir := filepath.Dir(path)
	select {
	case <-reaped:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("recording %s (pid %d) in %s: %w; it still runs after SIGKILL: kill %d, free space in %s (df -h %s), then start it again",
			p.Name, p.PID, path, err, p.PID, dir, dir)
	}
	return fmt.Errorf("recording %s (pid %d) in %s: %w; it was stopped so that it does not run untracked: free space in %s (df -h %s), then start it again",
		p.Name, p.PID, path, err, dir, dir)
}

// unrecorded returns the live processes of p's role that are none of
// recorded: in p's network namespace, running p's program (the base name of
// argv[0], which is the program nsenter executed). A start that could not
// record its process, or one killed before it did, leaves such a process.
func unrecorded(p Proc, recorded []Proc) ([]Proc, error) {
	if len(p.Command) == 0 {
		return nil, nil
	}
	id, err := netns.IDOfPath(netns.Path(p.Netns))
	if err != nil {
		return nil, fmt.Errorf("network namespace %s of %s: %w", p.Netns, p.Name, err)
	}
	known := map[int]uint64{}
	for _, r := range recorded {
		known[r.PID] = r.StartTime
	}
	prog := filepath.Base(p.Command[0])
	var out []Proc
	for _, q := range ProcsInNetns(map[netns.ID]bool{id: true}) {
		if start, ok := known[q.PID]; ok && start == q.StartTime {
			continue
		}
		argv := procCmdline(q.PID)
		if len(argv) == 0 || filepath.Base(argv[0]) != prog {
			continue
		}
		q.Command, q.Netns = argv, p.Netns
		out = append(out, q)
	}
	return out, nil
}

// procCmdline is the argument vector of pid, nil when unreadable.
func procCmdline(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// holdsListener returns nil when process pid holds a listening socket: TCP
// (v4 or v6) on port in pid's network namespace when port > 0, else the
// unix socket bound at unixPath. Otherwise the error names the process that
// holds it, if any. With one listener per address (no SO_REUSEPORT on
// readiness ports), an answer on that address then came from pid.
func holdsListener(pid, port int, unixPath string) error {
	var inodes map[string]bool
	what := unixPath
	if port > 0 {
		what = fmt.Sprintf("TCP port %d", port)
		inodes = tcpListeners(pid, port)
	} else {
		inodes = unixListeners(pid, unixPath)
	}
	if len(inodes) == 0 {
		return fmt.Errorf("nothing listens on %s in the network namespace of pid %d", what, pid)
	}
	if socketsOf(pid, inodes) {
		return nil
	}
	self, _ := netns.IDOfPath(fmt.Sprintf("/proc/%d/ns/net", pid))
	for _, q := range ProcsInNetns(map[netns.ID]bool{self: true}) {
		if q.PID != pid && socketsOf(q.PID, inodes) {
			return fmt.Errorf("%s is served by pid %d (%s), not by pid %d", what, q.PID, strings.Join(procCmdline(q.PID), " "), pid)
		}
	}
	return fmt.Errorf("%s is served by another process, not by pid %d", what, pid)
}

// tcpListeners returns the inodes of the TCP sockets listening on port in
// pid's network namespace.
func tcpListeners(pid, port int) map[string]bool {
	out := map[string]bool{}
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" { // 0A: TCP_LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(fs[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil && int(p) == port {
				out[fs[9]] = true
			}
		}
	}
	return out
}

// unixListeners returns the inodes of the listening unix sockets bound at
// path, as pid's network namespace lists them.
func unixListeners(pid int, path string) map[string]bool {
	out := map[string]bool{}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		// Num RefCount Protocol Flags Type St Inode Path
		fs := strings.Fields(line)
		if len(fs) < 8 || fs[7] != path {
			continue
		}
		if flags, err := strconv.ParseUint(fs[3], 16, 32); err == nil && flags&0x10000 != 0 { // __SO_ACCEPTCON: listening
			out[fs[6]] = true
		}
	}
	return out
}

// socketsOf reports whether pid has a descriptor open on one of the socket
// inodes.
func socketsOf(pid int, inodes map[string]bool) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if in, ok := strings.CutPrefix(l, "socket:["); ok && inodes[strings.TrimSuffix(in, "]")] {
			return true
		}
	}
	return false
}
