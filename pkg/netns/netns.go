package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// RunDir is where named namespaces are bind-mounted, as with `ip netns add`.
const RunDir = "/var/run/netns"

// ErrInvalidName is returned for a namespace name that is empty, too long or
// contains a path separator.
var ErrInvalidName = errors.New("invalid network namespace name")

// Path returns the bind-mount path of the named namespace.
func Path(name string) string { return filepath.Join(RunDir, name) }

// Open opens the namespace at path: a /var/run/netns/<name> bind mount or a
// /proc/<pid>/ns/net link. It checks that the file is a network namespace.
func Open(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	if err := checkNetNS(f); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// OpenName opens the namespace created with that name (see Create).
func OpenName(name string) (*os.File, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	return Open(Path(name))
}

// OpenPID opens the network namespace of process pid.
func OpenPID(pid int) (*os.File, error) {
	return Open("/proc/" + strconv.Itoa(pid) + "/ns/net")
}

// Host opens the network namespace of the process's main thread. That is the
// namespace the process started in, unless a goroutine that left its thread
// in another namespace ran on the main thread (the runtime cannot discard
// the main thread; it parks it instead). Code that must know the starting
// namespace for sure should open it at startup.
func Host() (*os.File, error) { return Open("/proc/self/ns/net") }

// CurrentThread opens the namespace of the calling OS thread. It is only
// meaningful while the goroutine is locked to its thread (inside Do).
func CurrentThread() (*os.File, error) { return Open("/proc/thread-self/ns/net") }

// ID identifies a network namespace: the device and inode of its nsfs file.
// Two files refer to the same namespace exactly when their IDs are equal.
type ID struct {
	Dev uint64
	Ino uint64
}

func (id ID) String() string { return fmt.Sprintf("net:[%d]", id.Ino) }

// IDOf returns the ID of the namespace f refers to.
func IDOf(f *os.File) (ID, error) {
	var st unix.Stat_t
	if err := fstat(f, &st); err != nil {
		return ID{}, fmt.Errorf("stat of network namespace %s: %w", f.Name(), err)
	}
	return ID{Dev: st.Dev, Ino: st.Ino}, nil
}

// IDOfPath returns the ID of the namespace at path.
func IDOfPath(path string) (ID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ID{}, fmt.Errorf("stat of network namespace %s: %w", path, err)
	}
	return ID{Dev: st.Dev, Ino: st.Ino}, nil
}

func fstat(f *os.File, st *unix.Stat_t) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), st) }); err != nil {
		return err
	}
	return serr
}

func checkNetNS(f *os.File) error {
	var fs unix.Statfs_t
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstatfs(int(fd), &fs) }); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("statfs of %s: %w", f.Name(), serr)
	}
	if fs.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("%s is not a namespace file (filesystem type %#x)", f.Name(), fs.Type)
	}
	return nil
}

// withFd calls fn with f's descriptor, keeping f alive meanwhile.
func withFd(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// Do runs fn on an OS thread switched into ns and returns fn's error.
//
// fn runs on a new goroutine locked to its thread; Do blocks until it ends.
// Goroutines fn starts run in the caller's namespace, not ns. Sockets fn
// creates belong to ns for their whole life. If the thread cannot be switched
// back, it stays locked and is discarded by the runtime when the goroutine
// exits, and Do returns an error wrapping the failure. A panic in fn is
// re-raised in the caller's goroutine after the thread is switched back.
func Do(ns *os.File, fn func() error) error {
	type result struct {
		err      error
		panicked bool
		panicVal any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread unless the thread is back in its namespace:
		// a goroutine exiting locked takes its thread with it.
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("opening current network namespace: %w", err)}
			return
		}
		defer orig.Close()
		if err := withFd(ns, func(fd int) error { return unix.Setns(fd, unix.CLONE_NEWNET) }); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("entering network namespace %s: %w", ns.Name(), err)}
			return
		}
		var res result
		func() {
			defer func() {
				if r := recover(); r != nil {
					res.panicked, res.panicVal = true, r
				}
			}()
			res.err = fn()
		}()
		if err := withFd(orig, func(fd int) error { return unix.Setns(fd, unix.CLONE_NEWNET) }); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			res.err = errors.Join(res.err, fmt.Errorf("restoring network namespace after %s (thread discarded): %w", ns.Name(), err))
			done <- res
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panicked {
		panic(res.panicVal)
	}
	return res.err
}

// Create creates a new network namespace bind-mounted at Path(name), like
// `ip netns add`, and returns it open. The new namespace has only a loopback
// device, which is down. It fails if the name is taken.
func Create(name string) (*os.File, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if err := prepareRunDir(); err != nil {
		return nil, err
	}
	path := Path(name)
	mp, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	mp.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		err = unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, "")
		if err != nil {
			err = fmt.Errorf("bind-mounting onto %s: %w", path, err)
		}
		if rerr := withFd(orig, func(fd int) error { return unix.Setns(fd, unix.CLONE_NEWNET) }); rerr != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(err, fmt.Errorf("restoring network namespace (thread discarded): %w", rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	f, err := Open(path)
	if err != nil {
		_ = Delete(name)
		return nil, err
	}
	return f, nil
}

// prepareRunDir makes RunDir a shared mount point, as iproute2 does, so that
// namespace mounts propagate to mount namespaces created later.
func prepareRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", RunDir, err)
	}
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("making %s a shared mount: %w", RunDir, err)
	}
	// Not a mount point yet: bind it onto itself first.
	if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s onto itself: %w", RunDir, err)
	}
	if err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s a shared mount: %w", RunDir, err)
	}
	return nil
}

// Delete unmounts and removes the named namespace, like `ip netns delete`.
// The namespace itself lives on while a process or open file still uses it.
// Deleting a name that does not exist is not an error.
func Delete(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	path := Path(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting network namespace %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing network namespace %s: %w", name, err)
	}
	return nil
}

// List returns the names of the named namespaces that start with prefix.
func List(prefix string) ([]string, error) {
	entries, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", RunDir, err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

func validName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > 255 || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	return nil
}
