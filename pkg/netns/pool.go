package netns

import (
	"fmt"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// The socket pool: a few goroutines, each locked to its OS thread for its
// whole life, that create sockets inside namespaces. A worker enters the
// requested namespace, calls socket(2), and returns to the namespace its
// thread started in, all without blocking; the caller does everything else
// (connect, bind, I/O) on its own goroutine. So creating sockets in other
// namespaces costs a bounded number of threads however many are requested
// at once, unlike Do around a blocking call.
//
// Each worker opens its thread's starting namespace once and keeps that
// descriptor for its life. A worker whose thread cannot return to it exits
// still locked, so the runtime discards the thread, after starting a
// replacement worker.

// poolSize is the number of socket workers: small and bounded, since each
// request holds a worker for a few microseconds.
func poolSize() int { return max(1, min(4, runtime.GOMAXPROCS(0))) }

type socketRequest struct {
	ns                 *os.File
	domain, typ, proto int
	reply              chan<- socketReply
}

type socketReply struct {
	fd  int
	err error
}

var pool struct {
	once sync.Once
	reqs chan socketRequest
}

func socketPool() chan<- socketRequest {
	pool.once.Do(func() {
		pool.reqs = make(chan socketRequest)
		var ready sync.WaitGroup
		for range poolSize() {
			ready.Add(1)
			go socketWorker(pool.reqs, ready.Done)
		}
		ready.Wait()
	})
	return pool.reqs
}

// socketWorker serves requests on one locked thread until that thread
// cannot switch back to its starting namespace. It calls ready once it has
// tried to open that namespace.
func socketWorker(reqs <-chan socketRequest, ready func()) {
	runtime.LockOSThread()
	orig, _ := openThreadNS() // retried on the next request if it failed
	ready()
	for r := range reqs {
		if orig < 0 {
			var oerr error
			if orig, oerr = openThreadNS(); oerr != nil {
				r.reply <- socketReply{fd: -1, err: oerr}
				continue
			}
		}
		fd, err, back := socketIn(r, orig)
		r.reply <- socketReply{fd: fd, err: err}
		if !back {
			unix.Close(orig)
			go socketWorker(reqs, func() {})
			return // still locked: the runtime ends this thread
		}
	}
}

func openThreadNS() (int, error) {
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening the socket worker's network namespace: %w", err)
	}
	return fd, nil
}

// socketIn creates r's socket in r.ns on the calling locked thread and
// switches back to orig. back is false when the thread could not switch
// back; the socket, if any, is still valid.
func socketIn(r socketRequest, orig int) (fd int, err error, back bool) {
	if err := withFd(r.ns, func(nsfd int) error { return unix.Setns(nsfd, unix.CLONE_NEWNET) }); err != nil {
		// A failed setns leaves the thread where it was.
		return -1, fmt.Errorf("entering network namespace %s: %w", r.ns.Name(), err), true
	}
	fd, serr := unix.Socket(r.domain, r.typ, r.proto)
	if serr != nil {
		fd, err = -1, os.NewSyscallError("socket", serr)
	}
	if berr := unix.Setns(orig, unix.CLONE_NEWNET); berr != nil {
		return fd, fmt.Errorf("restoring network namespace after %s (thread discarded): %w", r.ns.Name(), berr), false
	}
	return fd, err, true
}

// socketFd creates a socket in ns through the pool and returns its raw
// descriptor, which the caller owns. typ should include SOCK_CLOEXEC.
func socketFd(ns *os.File, domain, typ, proto int) (int, error) {
	reply := make(chan socketReply, 1)
	socketPool() <- socketRequest{ns: ns, domain: domain, typ: typ, proto: proto, reply: reply}
	r := <-reply
	if r.err != nil && r.fd >= 0 {
		// Created, but the worker's thread was lost: the socket is fine.
		return r.fd, nil
	}
	return r.fd, r.err
}

// Socket creates a socket in ns, like socket(2) called on a thread inside
// ns, and returns it non-blocking and close-on-exec as a pollable *os.File
// (use its SyscallConn; Fd would make it blocking). The socket belongs to
// ns for its whole life. The caller owns the file.
//
// Socket holds no OS thread beyond the few of its shared worker pool, so
// any number of callers may use it at once.
func Socket(ns *os.File, domain, typ, proto int) (*os.File, error) {
	fd, err := socketFd(ns, domain, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("creating socket in network namespace %s: %w", ns.Name(), err)
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("socket in %s", ns.Name())), nil
}
