//go:build linux

package zds

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func addMsg(uid string) *zdsapi.WorkloadRequest {
	return &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{
		Uid:          uid,
		WorkloadInfo: &zdsapi.WorkloadInfo{Name: "p", Namespace: "ns", ServiceAccount: "sa"},
	}}}
}

func delMsg(uid string) *zdsapi.WorkloadRequest {
	return &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: uid}}}
}

func keepMsg(uid string) *zdsapi.WorkloadRequest {
	return &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: uid}}}
}

func snapMsg() *zdsapi.WorkloadRequest {
	return &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}}
}

func openNetns(t testing.TB) int {
	t.Helper()
	fd, err := unix.Open("/proc/self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func openDevNull(t testing.TB) int {
	t.Helper()
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func fdClosed(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return errors.Is(err, unix.EBADF)
}

func TestDecodeRequest(t *testing.T) {
	concat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	add := mustMarshal(t, addMsg("u1"))
	cases := []struct {
		name    string
		data    []byte
		netns   int // netns fds to attach
		devnull int // non-netns fds to attach
		want    Kind
		wantErr error
	}{
		{name: "add", data: add, netns: 1, want: KindAdd},
		{name: "keep", data: mustMarshal(t, keepMsg("u1")), want: KindKeep},
		{name: "del", data: mustMarshal(t, delMsg("u1")), want: KindDel},
		{name: "snapshot_sent", data: mustMarshal(t, snapMsg()), want: KindSnapshotSent},
		{name: "add with unknown extra field", data: concat(add, []byte{0x50, 0x01}), netns: 1, want: KindAdd},
		{name: "garbage", data: []byte{0xff, 0xff, 0xff}, wantErr: ErrMalformed},
		{name: "empty", data: nil, wantErr: ErrMalformed},
		{name: "unknown kind", data: []byte{0x4a, 0x00}, wantErr: ErrMalformed}, // field 9, bytes
		{name: "two payloads", data: concat(add, mustMarshal(t, delMsg("u1"))), netns: 1, wantErr: ErrMalformed},
		{name: "add twice", data: concat(add, add), netns: 1, wantErr: ErrMalformed},
		{name: "payload with wrong wire type", data: []byte{0x18, 0x01}, wantErr: ErrMalformed}, // field 3 varint
		{name: "add without fd", data: add, wantErr: ErrMalformed},
		{name: "add with two fds", data: add, netns: 2, wantErr: ErrMalformed},
		{name: "add with non-netns fd", data: add, devnull: 1, wantErr: ErrMalformed},
		{name: "add without uid", data: mustMarshal(t, addMsg("")), netns: 1, wantErr: ErrMalformed},
		{name: "del without uid", data: mustMarshal(t, delMsg("")), wantErr: ErrMalformed},
		{name: "keep without uid", data: mustMarshal(t, keepMsg("")), wantErr: ErrMalformed},
		{name: "del with fd", data: mustMarshal(t, delMsg("u1")), netns: 1, wantErr: ErrMalformed},
		{name: "keep with fd", data: mustMarshal(t, keepMsg("u1")), netns: 1, wantErr: ErrMalformed},
		{name: "snapshot_sent with fd", data: mustMarshal(t, snapMsg()), devnull: 1, wantErr: ErrMalformed},
		{name: "oversized", data: make([]byte, MaxMessageSize+1), netns: 1, wantErr: ErrOversized},
		{name: "invalid utf8 uid", data: []byte{0x12, 0x03, 0x12, 0x01, 0xff}, wantErr: ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var fds []int
			for range tc.netns {
				fds = append(fds, openNetns(t))
			}
			for range tc.devnull {
				fds = append(fds, openDevNull(t))
			}
			req, err := DecodeRequest(tc.data, fds)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if req.Netns != nil {
					t.Fatal("Netns set on error")
				}
				for _, fd := range fds {
					if !fdClosed(fd) {
						t.Errorf("fd %d left open on error", fd)
						unix.Close(fd)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if req.Kind != tc.want {
				t.Fatalf("kind = %v, want %v", req.Kind, tc.want)
			}
			if tc.want == KindAdd {
				if req.Netns == nil || int(req.Netns.Fd()) != fds[0] {
					t.Fatalf("Netns = %v, want fd %d", req.Netns, fds[0])
				}
				if req.UID != "u1" || req.Name != "p" || req.Namespace != "ns" || req.ServiceAccount != "sa" {
					t.Fatalf("decoded %+v", req)
				}
				req.Netns.Close()
			} else if req.Netns != nil {
				t.Fatal("Netns set for non-add")
			}
		})
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	for _, r := range []Request{
		{Kind: KindAdd, UID: "a", Name: "n", Namespace: "ns", ServiceAccount: "sa"},
		{Kind: KindKeep, UID: "k"},
		{Kind: KindDel, UID: "d"},
		{Kind: KindSnapshotSent},
	} {
		b, err := encodeRequest(r)
		if err != nil {
			t.Fatal(err)
		}
		var fds []int
		if r.Kind == KindAdd {
			fds = []int{openNetns(t)}
		}
		got, err := DecodeRequest(b, fds)
		if err != nil {
			t.Fatalf("%v: %v", r.Kind, err)
		}
		if got.Netns != nil {
			got.Netns.Close()
			got.Netns = nil
		}
		if got != r {
			t.Fatalf("round trip %+v, got %+v", r, got)
		}
	}
	if _, err := encodeRequest(Request{Kind: KindDel}); err == nil {
		t.Fatal("encoding del without uid succeeded")
	}
	if _, err := encodeRequest(Request{Kind: KindAdd, UID: "x", Name: string(make([]byte, MaxMessageSize))}); !errors.Is(err, ErrOversized) {
		t.Fatalf("oversized encode: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(mustMarshal(f, addMsg("u1")), uint8(1), true)
	f.Add(mustMarshal(f, delMsg("u1")), uint8(0), false)
	f.Add(mustMarshal(f, keepMsg("u1")), uint8(1), false)
	f.Add(mustMarshal(f, snapMsg()), uint8(0), false)
	f.Add(append(mustMarshal(f, addMsg("u1")), mustMarshal(f, delMsg("u2"))...), uint8(2), true)
	f.Add([]byte{0xff, 0x01}, uint8(3), true)
	f.Fuzz(func(t *testing.T, data []byte, nfds uint8, netns bool) {
		n := int(nfds % (maxFDs + 1))
		fds := make([]int, 0, n)
		for range n {
			if netns {
				fds = append(fds, openNetns(t))
			} else {
				fds = append(fds, openDevNull(t))
			}
		}
		req, err := DecodeRequest(data, fds)
		kept := -1
		if err == nil && req.Kind == KindAdd {
			if req.Netns == nil {
				t.Fatal("add without Netns")
			}
			kept = int(req.Netns.Fd())
		} else if req.Netns != nil {
			t.Fatal("Netns set for non-add or on error")
		}
		if err == nil && req.Kind != KindSnapshotSent && req.UID == "" {
			t.Fatal("accepted request without uid")
		}
		for _, fd := range fds {
			if fd != kept && !fdClosed(fd) {
				t.Fatalf("fd %d leaked (err=%v)", fd, err)
			}
		}
		if req.Netns != nil {
			req.Netns.Close()
		}
	})
}

// FuzzHello: parseHello never panics, never leaks an fd, and accepts only
// fd-free, well-formed hellos of a known version.
func FuzzHello(f *testing.F) {
	f.Add(mustMarshal(f, &zdsapi.ZdsHello{Version: zdsapi.Version_V1}), uint8(0))
	f.Add([]byte{0x08, 0x00}, uint8(0))
	f.Add([]byte{0x08, 0x01}, uint8(1))
	f.Add([]byte{0xff, 0xff}, uint8(0))
	f.Add([]byte{0x50, 0x01}, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, nfds uint8) {
		n := int(nfds % (maxFDs + 1))
		fds := make([]int, 0, n)
		for range n {
			fds = append(fds, openDevNull(t))
		}
		v, err := parseHello(packet{data: data, fds: fds})
		for _, fd := range fds {
			if !fdClosed(fd) {
				t.Fatalf("fd %d leaked (err=%v)", fd, err)
			}
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if n > 0 || v < zdsapi.Version_V1 {
			t.Fatalf("accepted hello with %d fds, version %v", n, v)
		}
	})
}

func TestKindString(t *testing.T) {
	if KindAdd.String() != "add" || Kind(42).String() != "Kind(42)" {
		t.Fatal(KindAdd.String(), Kind(42).String())
	}
}

func TestLimitAckText(t *testing.T) {
	long := strings.Repeat("é", 1000) // 2 bytes each
	got := limitAckText(long)
	if len(got) > maxAckText || !utf8.ValidString(got) || !strings.HasSuffix(got, "...") {
		t.Fatalf("limitAckText: len %d valid %v", len(got), utf8.ValidString(got))
	}
	if _, err := encodeAck(got); err != nil {
		t.Fatal(err)
	}
	if limitAckText("short") != "short" {
		t.Fatal("short text changed")
	}
}
