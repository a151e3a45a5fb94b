//go:build linux

package zds

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// MaxMessageSize is the largest ZDS packet accepted or sent, in bytes. Real
// messages are well under 1 KiB (uid, pod name, namespace, service account).
const MaxMessageSize = 4096

// maxFDs is the number of descriptors one received packet has room for; a
// packet with more is rejected (MSG_CTRUNC) and the kernel drops the excess.
const maxFDs = 4

// Sentinel errors. Returned errors wrap them; test with errors.Is.
var (
	// ErrNoZtunnel: no ztunnel is connected to the Server.
	ErrNoZtunnel = errors.New("no ztunnel connected")
	// ErrAckTimeout: ztunnel did not ack a request in time; the connection
	// was dropped.
	ErrAckTimeout = errors.New("timed out waiting for ztunnel ack")
	// ErrConnClosed: the ztunnel connection ended before the request was acked.
	ErrConnClosed = errors.New("ztunnel connection closed")
	// ErrServerClosed: the Server was closed.
	ErrServerClosed = errors.New("zds server closed")
	// ErrMalformed: a packet failed to decode or validate.
	ErrMalformed = errors.New("malformed zds message")
	// ErrOversized: a packet was larger than MaxMessageSize.
	ErrOversized = errors.New("zds message too large")
	// ErrTruncated: ancillary data (fds) was truncated by the kernel.
	ErrTruncated = errors.New("zds control message truncated")
	// ErrRefused: the Server refused a connection (peer not allowed, bad
	// or missing hello, too many connections waiting for their hello).
	ErrRefused = errors.New("zds connection refused")
)

// AckError is returned by Server.AddPod / DelPod when ztunnel acked the
// request with a non-empty error.
type AckError struct {
	Msg string
}

func (e *AckError) Error() string { return "ztunnel rejected the request: " + e.Msg }

// Kind is the payload kind of a WorkloadRequest.
type Kind int

// Request kinds, one per WorkloadRequest oneof field.
const (
	KindAdd Kind = iota + 1
	KindKeep
	KindDel
	KindSnapshotSent
)

func (k Kind) String() string {
	switch k {
	case KindAdd:
		return "add"
	case KindKeep:
		return "keep"
	case KindDel:
		return "del"
	case KindSnapshotSent:
		return "snapshot_sent"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// WorkloadRequest oneof field numbers (zds.proto).
const (
	fieldAdd          protowire.Number = 1
	fieldDel          protowire.Number = 2
	fieldSnapshotSent protowire.Number = 3
	fieldKeep         protowire.Number = 5
)

// Request is a decoded, validated WorkloadRequest.
type Request struct {
	Kind Kind
	// UID is set for add, keep and del.
	UID string
	// Name, Namespace, ServiceAccount come from an add's WorkloadInfo.
	Name, Namespace, ServiceAccount string
	// Netns is the pod's network namespace; set for add only. The caller of
	// DecodeRequest owns it.
	Netns *os.File
}

// DecodeRequest decodes and validates one WorkloadRequest packet together
// with the descriptors that arrived with it. It takes ownership of fds: on
// success an add's single fd is returned as Request.Netns (owned by the
// caller); every other fd, and all fds on error, are closed. Errors wrap
// ErrMalformed or ErrOversized. It never panics.
func DecodeRequest(data []byte, fds []int) (req Request, err error) {
	keep := -1
	defer func() {
		for i, fd := range fds {
			if i != keep {
				_ = unix.Close(fd)
			}
		}
	}()
	if len(data) > MaxMessageSize {
		return Request{}, fmt.Errorf("%w: %d bytes, limit %d", ErrOversized, len(data), MaxMessageSize)
	}
	kind, err := payloadKind(data)
	if err != nil {
		return Request{}, err
	}
	var m zdsapi.WorkloadRequest
	if err := proto.Unmarshal(data, &m); err != nil {
		return Request{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	req.Kind = kind
	wantFDs := 0
	switch kind {
	case KindAdd:
		add := m.GetAdd()
		req.UID = add.GetUid()
		info := add.GetWorkloadInfo()
		req.Name, req.Namespace, req.ServiceAccount = info.GetName(), info.GetNamespace(), info.GetServiceAccount()
		wantFDs = 1
	case KindKeep:
		req.UID = m.GetKeep().GetUid()
	case KindDel:
		req.UID = m.GetDel().GetUid()
	}
	if kind != KindSnapshotSent && req.UID == "" {
		return Request{}, fmt.Errorf("%w: %s without uid", ErrMalformed, kind)
	}
	if len(fds) != wantFDs {
		return Request{}, fmt.Errorf("%w: %s carries %d fds, want %d", ErrMalformed, kind, len(fds), wantFDs)
	}
	if wantFDs == 1 {
		if err := checkNetnsFD(fds[0]); err != nil {
			return Request{}, fmt.Errorf("%w: add for pod %s: %v", ErrMalformed, req.UID, err)
		}
		keep = 0
		req.Netns = os.NewFile(uintptr(fds[0]), "netns:"+req.UID)
	}
	return req, nil
}

// payloadKind scans the top level of a WorkloadRequest and returns the kind
// of its single oneof payload. Protobuf would silently keep the last of two
// oneof fields (or merge a repeated one); ZDS rejects both.
func payloadKind(b []byte) (Kind, error) {
	var kind Kind
	n := 0
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return 0, fmt.Errorf("%w: %v", ErrMalformed, protowire.ParseError(l))
		}
		b = b[l:]
		vl := protowire.ConsumeFieldValue(num, typ, b)
		if vl < 0 {
			return 0, fmt.Errorf("%w: field %d: %v", ErrMalformed, num, protowire.ParseError(vl))
		}
		b = b[vl:]
		var k Kind
		switch num {
		case fieldAdd:
			k = KindAdd
		case fieldKeep:
			k = KindKeep
		case fieldDel:
			k = KindDel
		case fieldSnapshotSent:
			k = KindSnapshotSent
		default:
			continue // unknown fields are ignored, as protobuf does
		}
		if typ != protowire.BytesType {
			return 0, fmt.Errorf("%w: field %d has wire type %d, want bytes", ErrMalformed, num, typ)
		}
		kind = k
		n++
	}
	switch n {
	case 0:
		return 0, fmt.Errorf("%w: no known payload (unknown message kind or empty request)", ErrMalformed)
	case 1:
		return kind, nil
	}
	return 0, fmt.Errorf("%w: %d payloads in one request, want exactly 1", ErrMalformed, n)
}

// checkNetnsFD reports whether fd refers to a namespace file (nsfs).
func checkNetnsFD(fd int) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return fmt.Errorf("fstatfs on netns fd: %w", err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("fd is not a namespace file (filesystem magic %#x)", st.Type)
	}
	return nil
}

// encodeRequest builds the packet for r (Netns is not encoded; it travels as
// SCM_RIGHTS).
func encodeRequest(r Request) ([]byte, error) {
	var m zdsapi.WorkloadRequest
	switch r.Kind {
	case KindAdd:
		m.Payload = &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{
			Uid: r.UID,
			WorkloadInfo: &zdsapi.WorkloadInfo{
				Name: r.Name, Namespace: r.Namespace, ServiceAccount: r.ServiceAccount,
			},
		}}
	case KindKeep:
		m.Payload = &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: r.UID}}
	case KindDel:
		m.Payload = &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: r.UID}}
	case KindSnapshotSent:
		m.Payload = &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}
	default:
		return nil, fmt.Errorf("encoding request: unknown kind %v", r.Kind)
	}
	if r.Kind != KindSnapshotSent && r.UID == "" {
		return nil, fmt.Errorf("encoding %s request: empty uid", r.Kind)
	}
	return marshalBounded(&m)
}

func marshalBounded(m proto.Message) ([]byte, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding zds message: %w", err)
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("encoding zds message: %w: %d bytes", ErrOversized, len(b))
	}
	return b, nil
}

// decodeAck decodes a WorkloadResponse and returns the ack's error string.
func decodeAck(b []byte) (string, error) {
	var m zdsapi.WorkloadResponse
	if err := proto.Unmarshal(b, &m); err != nil {
		return "", fmt.Errorf("%w: ack: %v", ErrMalformed, err)
	}
	ack := m.GetAck()
	if ack == nil {
		return "", fmt.Errorf("%w: response without ack", ErrMalformed)
	}
	return ack.GetError(), nil
}

func encodeAck(errMsg string) ([]byte, error) {
	return marshalBounded(&zdsapi.WorkloadResponse{
		Payload: &zdsapi.WorkloadResponse_Ack{Ack: &zdsapi.Ack{Error: errMsg}},
	})
}

func decodeHello(b []byte) (zdsapi.Version, error) {
	if len(b) == 0 {
		return 0, fmt.Errorf("%w: empty hello", ErrMalformed)
	}
	var m zdsapi.ZdsHello
	if err := proto.Unmarshal(b, &m); err != nil {
		return 0, fmt.Errorf("%w: hello: %v", ErrMalformed, err)
	}
	return m.GetVersion(), nil
}

// parseHello validates a received hello packet: no fds, a well-formed
// ZdsHello, a known version. It closes the packet's fds.
func parseHello(p packet) (zdsapi.Version, error) {
	closeFDs(p.fds)
	if p.err != nil {
		return 0, p.err
	}
	if len(p.fds) > 0 {
		return 0, fmt.Errorf("%w: hello carries %d fds", ErrMalformed, len(p.fds))
	}
	v, err := decodeHello(p.data)
	if err != nil {
		return 0, err
	}
	if v < zdsapi.Version_V1 {
		return 0, fmt.Errorf("%w: hello with unsupported version %v", ErrMalformed, v)
	}
	return v, nil
}

func encodeHello(v zdsapi.Version) ([]byte, error) {
	return marshalBounded(&zdsapi.ZdsHello{Version: v})
}
