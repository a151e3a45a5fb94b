package sockopt

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseSockaddr(t *testing.T) {
	v4 := make([]byte, unix.SizeofSockaddrInet4)
	binary.NativeEndian.PutUint16(v4[0:2], unix.AF_INET)
	binary.BigEndian.PutUint16(v4[2:4], 8080)
	copy(v4[4:8], []byte{10, 1, 2, 3})

	v6 := make([]byte, unix.SizeofSockaddrInet6)
	binary.NativeEndian.PutUint16(v6[0:2], unix.AF_INET6)
	binary.BigEndian.PutUint16(v6[2:4], 443)
	a6 := netip.MustParseAddr("fd00::5").As16()
	copy(v6[8:24], a6[:])

	mapped := make([]byte, unix.SizeofSockaddrInet6)
	copy(mapped, v6)
	m := netip.MustParseAddr("::ffff:192.0.2.1").As16()
	copy(mapped[8:24], m[:])

	bad := make([]byte, unix.SizeofSockaddrInet6)
	binary.NativeEndian.PutUint16(bad[0:2], unix.AF_UNIX)

	tests := []struct {
		name    string
		in      []byte
		want    netip.AddrPort
		wantErr bool
	}{
		{"ipv4", v4, netip.MustParseAddrPort("10.1.2.3:8080"), false},
		{"ipv6", v6, netip.MustParseAddrPort("[fd00::5]:443"), false},
		{"v4-mapped is unmapped", mapped, netip.MustParseAddrPort("192.0.2.1:443"), false},
		{"short v4", v4[:6], netip.AddrPort{}, true},
		{"short v6", v6[:20], netip.AddrPort{}, true},
		{"empty", nil, netip.AddrPort{}, true},
		{"other family", bad, netip.AddrPort{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSockaddr(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func FuzzParseSockaddr(f *testing.F) {
	f.Add([]byte{2, 0, 0x1f, 0x90, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseSockaddr(b)
	})
}
