//go:build linux

package zds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"istio.io/istio/pkg/zdsapi"
)

// DefaultSocketPath is where ztunnel expects the agent's ZDS socket.
const DefaultSocketPath = "/var/run/ztunnel/ztunnel.sock"

// DefaultAckTimeout bounds the wait for one ack (and for ztunnel's hello).
const DefaultAckTimeout = 5 * time.Second

// DefaultMaxPending is ServerConfig.MaxPending's default.
const DefaultMaxPending = 16

// Peer is the process at the other end of a ZDS connection, as the kernel
// recorded it when the process connected (SO_PEERCRED).
type Peer struct {
	PID int32
	UID uint32
	GID uint32
}

// Pod is one workload the agent hands to ztunnel.
type Pod struct {
	UID            string
	Name           string
	Namespace      string
	ServiceAccount string
	// Netns is the pod's network namespace file. Borrowed: the Server
	// duplicates the descriptor and never closes this file.
	Netns *os.File
	// NetnsPath is opened when Netns is nil (e.g. /var/run/netns/x or
	// /proc/<pid>/ns/net).
	NetnsPath string
}

// SnapshotSource gives the Server the agent's current pods. It is called
// once per ztunnel connection, after the hello, and must be safe to call from
// the Server's goroutine. A pod whose netns cannot be opened is sent as a
// keep (ztunnel keeps what it has for that uid).
//
// To avoid losing a pod to a reconnect race, update the source before
// calling AddPod/DelPod for the same pod.
type SnapshotSource interface {
	Snapshot() []Pod
}

// SnapshotFunc adapts a function to SnapshotSource.
type SnapshotFunc func() []Pod

// Snapshot calls f.
func (f SnapshotFunc) Snapshot() []Pod { return f() }

var _ SnapshotSource = SnapshotFunc(nil)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Path of the unix socket; DefaultSocketPath if empty.
	Path string
	// Snapshot is required.
	Snapshot SnapshotSource
	// AckTimeout bounds the wait for each ack and for the hello;
	// DefaultAckTimeout if zero.
	AckTimeout time.Duration
	// AllowedUIDs are the user ids a ztunnel may connect as (the peer's
	// effective uid, SO_PEERCRED). Empty: root and the agent's own
	// effective uid.
	AllowedUIDs []uint32
	// VerifyPeer, if set, further checks a peer whose uid is allowed,
	// before its hello is read; an error refuses the connection.
	VerifyPeer func(Peer) error
	// MaxPending bounds the connections accepted whose hello has not
	// arrived yet; DefaultMaxPending if zero. A new connection past the
	// bound drops the oldest waiting one, so a flood of idle connections
	// delays a real ztunnel by at most its own hello.
	MaxPending int
	// OnRefused, if set, is called once for every refused connection (uid
	// not allowed, VerifyPeer failed, bad or missing hello, dropped while
	// waiting), from the Server's goroutines. Refused counts them too.
	OnRefused func(p Peer, reason error)
	// Logger; discards if nil.
	Logger *slog.Logger
}

// Server is the agent side of ZDS: it listens on the socket, serves one
// ztunnel connection at a time and sends it the snapshot, then
// AddPod/DelPod requests. A new connection is verified first (peer uid,
// VerifyPeer, then a valid hello within the ack timeout); only a verified
// connection replaces the current one, so a refused one never disturbs it.
// Safe for concurrent use.
type Server struct {
	cfg     ServerConfig
	log     *slog.Logger
	ln      *net.UnixListener
	ino     uint64 // inode of the socket file we created
	allowed []uint32
	wg      sync.WaitGroup
	stop    chan struct{}
	refused atomic.Uint64

	mu      sync.Mutex
	cur     *serverConn
	pending []*serverConn // accepted, hello not verified yet; oldest first
	changed chan struct{} // closed and replaced when cur or its readiness changes
	closed  bool
}

// NewServer creates the socket's parent directory (0755) if needed, removes
// a stale socket file, and listens with mode 0600. Call Serve to accept.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Path == "" {
		cfg.Path = DefaultSocketPath
	}
	if cfg.Snapshot == nil {
		return nil, errors.New("zds server: no snapshot source configured")
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = DefaultAckTimeout
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	allowed := slices.Clone(cfg.AllowedUIDs)
	if len(allowed) == 0 {
		allowed = []uint32{0, uint32(os.Geteuid())}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, ino, err := listen(cfg.Path)
	if err != nil {
		return nil, err
	}
	return &Server{
		cfg: cfg, log: log, ln: ln, ino: ino, allowed: allowed,
		stop:    make(chan struct{}),
		changed: make(chan struct{}),
	}, nil
}

// listen binds in a private temporary directory, sets mode 0600, then
// renames into place, so the socket is never reachable with wider
// permissions.
func listen(path string) (*net.UnixListener, uint64, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, fmt.Errorf("creating zds socket directory %s: %w", dir, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, 0, fmt.Errorf("zds socket path %s exists and is not a socket; remove it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, 0, fmt.Errorf("removing stale zds socket %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, 0, fmt.Errorf("checking zds socket path %s: %w", path, err)
	}
	tmp, err := os.MkdirTemp(dir, ".zds-")
	if err != nil {
		return nil, 0, fmt.Errorf("creating temporary directory in %s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	tmpSock := filepath.Join(tmp, "s")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmpSock, Net: "unixpacket"})
	if err != nil {
		return nil, 0, fmt.Errorf("listening on zds socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, uint64, error) {
		ln.Close()
		return nil, 0, err
	}
	if err := os.Chmod(tmpSock, 0o600); err != nil {
		return fail(fmt.Errorf("setting mode of zds socket: %w", err))
	}
	if err := os.Rename(tmpSock, path); err != nil {
		return fail(fmt.Errorf("moving zds socket into place at %s: %w", path, err))
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(fmt.Errorf("checking zds socket %s: %w", path, err))
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return ln, ino, nil
}

// Path returns the socket path.
func (s *Server) Path() string { return s.cfg.Path }

// Serve accepts ztunnel connections until ctx is done or Close is called;
// it then closes the Server and returns nil. Call it once.
func (s *Server) Serve(ctx context.Context) error {
	go func() {
		select {
		case <-ctx.Done():
			s.Close()
		case <-s.stop:
		}
	}()
	var tempDelay time.Duration
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			select {
			case <-s.stop:
				s.wg.Wait()
				return nil
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accepting ztunnel connections: %w", err)
			}
			// Transient (e.g. EMFILE): back off, as net/http does.
			tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
			s.log.Warn("accepting ztunnel connection", "error", err)
			t := time.NewTimer(tempDelay)
			select {
			case <-t.C:
			case <-s.stop:
			}
			continue
		}
		tempDelay = 0
		s.admit(c)
	}
}

// admit checks a new connection's peer and, if allowed, starts waiting for
// its hello as a pending connection; it never blocks on the peer.
func (s *Server) admit(c *net.UnixConn) {
	peer, err := peerOf(c)
	if err == nil {
		err = s.checkPeer(peer)
	}
	if err != nil {
		c.Close()
		s.refuse(peer, err)
		return
	}
	sc := newServerConn(s, c, peer)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	var evicted *serverConn
	if len(s.pending) >= s.cfg.MaxPending {
		evicted = s.pending[0]
		s.pending = slices.Delete(s.pending, 0, 1)
	}
	s.pending = append(s.pending, sc)
	s.wg.Add(1)
	s.mu.Unlock()
	if evicted != nil {
		// Its handle goroutine reports the refusal.
		evicted.close(fmt.Errorf("%w: dropped while waiting for its hello: more than %d connections waiting", ErrRefused, s.cfg.MaxPending))
	}
	go func() {
		defer s.wg.Done()
		s.handle(sc)
	}()
}

// checkPeer applies the uid policy and VerifyPeer.
func (s *Server) checkPeer(p Peer) error {
	if !slices.Contains(s.allowed, p.UID) {
		return fmt.Errorf("%w: peer uid %d is not allowed (allowed uids %v)", ErrRefused, p.UID, s.allowed)
	}
	if s.cfg.VerifyPeer != nil {
		if err := s.cfg.VerifyPeer(p); err != nil {
			return fmt.Errorf("%w: %v", ErrRefused, err)
		}
	}
	return nil
}

// refuse logs and counts a refused connection.
func (s *Server) refuse(p Peer, reason error) {
	s.refused.Add(1)
	s.log.Warn("refused ztunnel connection; the current one, if any, stays", "pid", p.PID, "uid", p.UID, "error", reason)
	if s.cfg.OnRefused != nil {
		s.cfg.OnRefused(p, reason)
	}
}

// Refused returns how many connections the Server refused since it started.
func (s *Server) Refused() uint64 { return s.refused.Load() }

// pendingCount returns how many connections are waiting for their hello.
func (s *Server) pendingCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// peerOf reads the credentials the kernel recorded for c's peer.
func peerOf(c *net.UnixConn) (Peer, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Peer{PID: -1}, fmt.Errorf("reading peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{PID: -1}, fmt.Errorf("reading peer credentials: %w", err)
	}
	if cerr != nil {
		return Peer{PID: -1}, fmt.Errorf("reading peer credentials (SO_PEERCRED): %w", cerr)
	}
	return Peer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

// Close stops accepting, drops the ztunnel connection, removes the socket
// file and fails pending requests with ErrServerClosed. Idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	cur := s.cur
	s.cur = nil
	pending := s.pending
	s.pending = nil
	s.notifyLocked()
	s.mu.Unlock()
	err := s.ln.Close()
	if cur != nil {
		cur.close(ErrServerClosed)
	}
	for _, sc := range pending {
		sc.close(ErrServerClosed)
	}
	if fi, lerr := os.Lstat(s.cfg.Path); lerr == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Ino == s.ino {
			_ = os.Remove(s.cfg.Path)
		}
	}
	return err
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// WaitReady blocks until a ztunnel is connected and its snapshot has been
// sent, or ctx is done.
func (s *Server) WaitReady(ctx context.Context) error {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return ErrServerClosed
		}
		ready := s.cur != nil && s.cur.snapshotDone
		ch := s.changed
		s.mu.Unlock()
		if ready {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for ztunnel: %w", ctx.Err())
		}
	}
}

// Connected reports whether a ztunnel connection is current.
func (s *Server) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur != nil
}

// AddPod sends an add for pod to the connected ztunnel and returns once
// ztunnel acked it: nil, an *AckError with ztunnel's message, or an error
// wrapping ErrNoZtunnel, ErrAckTimeout, ErrConnClosed or ErrServerClosed.
// If the connection's snapshot is still being sent, AddPod waits for it.
func (s *Server) AddPod(ctx context.Context, pod Pod) error {
	if pod.UID == "" {
		return errors.New("zds add: pod has no uid")
	}
	fd, err := dupNetns(pod)
	if err != nil {
		return fmt.Errorf("zds add for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	req := Request{Kind: KindAdd, UID: pod.UID, Name: pod.Name, Namespace: pod.Namespace, ServiceAccount: pod.ServiceAccount}
	if err := s.do(ctx, req, fd); err != nil {
		return fmt.Errorf("zds add for pod %s/%s (uid %s): %w", pod.Namespace, pod.Name, pod.UID, err)
	}
	return nil
}

// DelPod sends a del for uid and returns once ztunnel acked it; errors as
// for AddPod.
func (s *Server) DelPod(ctx context.Context, uid string) error {
	if uid == "" {
		return errors.New("zds del: empty uid")
	}
	if err := s.do(ctx, Request{Kind: KindDel, UID: uid}, -1); err != nil {
		return fmt.Errorf("zds del for pod uid %s: %w", uid, err)
	}
	return nil
}

// do sends req on the current connection; it takes ownership of fd (closed
// after the send, or on failure).
func (s *Server) do(ctx context.Context, req Request, fd int) error {
	data, err := encodeRequest(req)
	if err != nil {
		closeFDs(fdList(fd))
		return err
	}
	s.mu.Lock()
	sc, closed := s.cur, s.closed
	s.mu.Unlock()
	if closed {
		closeFDs(fdList(fd))
		return ErrServerClosed
	}
	if sc == nil {
		closeFDs(fdList(fd))
		return ErrNoZtunnel
	}
	// Queue for the connection's write turn.
	select {
	case sc.turn <- struct{}{}:
	case <-sc.done:
		closeFDs(fdList(fd))
		return sc.err()
	case <-ctx.Done():
		closeFDs(fdList(fd))
		return fmt.Errorf("waiting for ztunnel connection: %w", ctx.Err())
	}
	// The exchange finishes (and releases the turn) even if ctx ends first,
	// so the next request never receives this one's ack.
	res := make(chan error, 1)
	go func() {
		defer func() { <-sc.turn }()
		res <- sc.exchange(data, fd)
	}()
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return fmt.Errorf("waiting for ztunnel ack: %w", ctx.Err())
	}
}

func fdList(fd int) []int {
	if fd < 0 {
		return nil
	}
	return []int{fd}
}

// dupNetns returns a new close-on-exec descriptor for the pod's netns, or
// an error if it has none.
func dupNetns(p Pod) (int, error) {
	if p.Netns != nil {
		rc, err := p.Netns.SyscallConn()
		if err != nil {
			return -1, fmt.Errorf("netns file: %w", err)
		}
		nfd := -1
		var derr error
		if err := rc.Control(func(fd uintptr) {
			nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		}); err != nil {
			return -1, fmt.Errorf("netns file: %w", err)
		}
		if derr != nil {
			return -1, fmt.Errorf("duplicating netns fd: %w", derr)
		}
		return nfd, nil
	}
	if p.NetnsPath == "" {
		return -1, errors.New("pod has neither a netns file nor a netns path")
	}
	fd, err := unix.Open(p.NetnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening netns %s: %w", p.NetnsPath, err)
	}
	return fd, nil
}

// handle runs one ztunnel connection: hello (the connection is pending
// until then), snapshot, then reads acks until the connection ends.
func (s *Server) handle(sc *serverConn) {
	defer func() {
		s.mu.Lock()
		if s.cur == sc {
			s.cur = nil
			s.notifyLocked()
		}
		s.mu.Unlock()
	}()
	log := sc.log
	// sc.turn is held (pre-filled) until the snapshot has been sent.
	ver, err := sc.readHello(s.cfg.AckTimeout)
	if !s.promote(sc, err) {
		return
	}
	log.Info("ztunnel connected", "version", ver.String())
	go sc.readLoop()
	if err := s.sendSnapshot(sc); err != nil {
		log.Warn("dropping ztunnel connection: sending snapshot", "error", err)
		sc.close(err)
		return
	}
	s.mu.Lock()
	sc.snapshotDone = true
	if s.cur == sc {
		s.notifyLocked()
	}
	s.mu.Unlock()
	<-sc.turn
	<-sc.done
	log.Info("ztunnel connection ended", "reason", sc.err())
}

// promote makes a pending connection whose hello was read (helloErr nil)
// the current one, closing the one it replaces. Otherwise it closes and
// refuses sc and returns false; the current connection is left alone.
func (s *Server) promote(sc *serverConn, helloErr error) bool {
	s.mu.Lock()
	i := slices.Index(s.pending, sc)
	if i >= 0 {
		s.pending = slices.Delete(s.pending, i, i+1)
	}
	closed := s.closed
	var old *serverConn
	if helloErr == nil && i >= 0 && !closed {
		old = s.cur
		s.cur = sc
		s.notifyLocked()
		s.mu.Unlock()
		if old != nil {
			s.log.Info("verified ztunnel connection replaces the current one", "pid", sc.peer.PID, "uid", sc.peer.UID)
			old.close(fmt.Errorf("%w: replaced by a newer ztunnel connection", ErrConnClosed))
		}
		return true
	}
	s.mu.Unlock()
	if closed {
		sc.close(ErrServerClosed)
		return false
	}
	reason := sc.err() // set when dropped while pending
	if reason == nil {
		if helloErr == nil {
			helloErr = errors.New("dropped while waiting")
		}
		reason = fmt.Errorf("%w: bad hello: %v", ErrRefused, helloErr)
		sc.close(reason)
	}
	s.refuse(sc.peer, reason)
	return false
}

func (s *Server) sendSnapshot(sc *serverConn) error {
	pods := s.cfg.Snapshot.Snapshot()
	for _, p := range pods {
		req := Request{Kind: KindAdd, UID: p.UID, Name: p.Name, Namespace: p.Namespace, ServiceAccount: p.ServiceAccount}
		fd, err := dupNetns(p)
		if err != nil {
			sc.log.Info("netns not available, sending keep", "pod", p.Name, "namespace", p.Namespace, "uid", p.UID, "error", err)
			req = Request{Kind: KindKeep, UID: p.UID}
			fd = -1
		}
		data, err := encodeRequest(req)
		if err != nil {
			closeFDs(fdList(fd))
			sc.log.Error("skipping pod in snapshot", "pod", p.Name, "namespace", p.Namespace, "uid", p.UID, "error", err)
			continue
		}
		err = sc.exchange(data, fd)
		var ae *AckError
		if errors.As(err, &ae) {
			sc.log.Error("ztunnel rejected pod in snapshot", "pod", p.Name, "namespace", p.Namespace, "uid", p.UID, "kind", req.Kind.String(), "error", ae.Msg)
			continue
		}
		if err != nil {
			return fmt.Errorf("sending snapshot %s for pod uid %s: %w", req.Kind, p.UID, err)
		}
	}
	data, err := encodeRequest(Request{Kind: KindSnapshotSent})
	if err != nil {
		return err
	}
	err = sc.exchange(data, -1)
	var ae *AckError
	if errors.As(err, &ae) {
		sc.log.Error("ztunnel rejected snapshot_sent", "error", ae.Msg)
		return nil
	}
	if err != nil {
		return fmt.Errorf("sending snapshot_sent: %w", err)
	}
	sc.log.Info("snapshot sent to ztunnel", "pods", len(pods))
	return nil
}

// serverConn is one ztunnel connection. Writers hold turn; readLoop
// delivers acks to the single outstanding request.
type serverConn struct {
	s    *Server
	c    *net.UnixConn
	peer Peer
	log  *slog.Logger
	turn chan struct{} // capacity 1: held by the current writer
	acks chan ackResult
	done chan struct{}

	mu           sync.Mutex
	pending      bool
	closeErr     error
	snapshotDone bool // guarded by Server.mu
}

type ackResult struct {
	msg string
}

func newServerConn(s *Server, c *net.UnixConn, peer Peer) *serverConn {
	sc := &serverConn{
		s: s, c: c, peer: peer, log: s.log.With("pid", peer.PID),
		turn: make(chan struct{}, 1),
		acks: make(chan ackResult, 1),
		done: make(chan struct{}),
	}
	sc.turn <- struct{}{} // held by handle until the snapshot is sent
	return sc
}

// close ends the connection once; err is what waiting requests get.
func (sc *serverConn) close(err error) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.closeErr != nil {
		return
	}
	sc.closeErr = err
	sc.c.Close()
	close(sc.done)
}

func (sc *serverConn) err() error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.closeErr
}

func (sc *serverConn) readHello(timeout time.Duration) (zdsapi.Version, error) {
	if err := sc.c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return 0, err
	}
	p, err := recvPacket(sc.c)
	if err != nil {
		if os.IsTimeout(err) {
			return 0, fmt.Errorf("no hello within %v", timeout)
		}
		return 0, err
	}
	v, err := parseHello(p)
	if err != nil {
		return 0, err
	}
	if err := sc.c.SetReadDeadline(time.Time{}); err != nil {
		return 0, err
	}
	return v, nil
}

// readLoop reads acks until the connection fails. Anything that is not a
// well-formed ack to an outstanding request ends the connection.
func (sc *serverConn) readLoop() {
	for {
		p, err := recvPacket(sc.c)
		if err != nil {
			if isClosedErr(err) {
				sc.close(fmt.Errorf("%w: ztunnel disconnected", ErrConnClosed))
			} else {
				sc.close(fmt.Errorf("%w: reading from ztunnel: %v", ErrConnClosed, err))
			}
			return
		}
		closeFDs(p.fds)
		var msg string
		switch {
		case p.err != nil:
			err = p.err
		case len(p.fds) > 0:
			err = fmt.Errorf("%w: ack carries %d fds", ErrMalformed, len(p.fds))
		default:
			msg, err = decodeAck(p.data)
		}
		sc.mu.Lock()
		pending := sc.pending
		sc.pending = false
		sc.mu.Unlock()
		if err == nil && !pending {
			err = errors.New("unsolicited message from ztunnel")
		}
		if err != nil {
			sc.log.Warn("dropping ztunnel connection: protocol error", "error", err)
			sc.close(fmt.Errorf("%w: protocol error: %v", ErrConnClosed, err))
			return
		}
		sc.acks <- ackResult{msg: msg}
	}
}

// exchange sends one request and waits for its ack. The caller holds turn.
// It takes ownership of fd. An ack timeout or write error ends the
// connection.
func (sc *serverConn) exchange(data []byte, fd int) error {
	defer func() { closeFDs(fdList(fd)) }()
	select {
	case <-sc.done:
		return sc.err()
	default:
	}
	timeout := sc.s.cfg.AckTimeout
	sc.mu.Lock()
	sc.pending = true
	sc.mu.Unlock()
	if err := sc.c.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		sc.close(fmt.Errorf("%w: %v", ErrConnClosed, err))
		return sc.err()
	}
	if err := sendPacket(sc.c, data, fd); err != nil {
		sc.close(fmt.Errorf("%w: writing to ztunnel: %v", ErrConnClosed, err))
		return sc.err()
	}
	closeFDs(fdList(fd))
	fd = -1
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case a := <-sc.acks:
		if a.msg != "" {
			return &AckError{Msg: a.msg}
		}
		return nil
	case <-sc.done:
		return sc.err()
	case <-t.C:
		err := fmt.Errorf("%w (%v); dropping the connection", ErrAckTimeout, timeout)
		sc.close(err)
		return err
	}
}
