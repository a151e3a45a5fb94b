package inpod

import (
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// Offsets in struct bpf_sk_lookup (linux/bpf.h).
const (
	skLookupProtocol  = 12
	skLookupLocalPort = 60 // host byte order
	// BPF_SK_LOOKUP_F_REPLACE | BPF_SK_LOOKUP_F_NO_REUSEPORT
	skLookupFlags = 1 | 2
	ipprotoTCP    = 6
)

// guardNamespace attaches to the network namespace ns an SK_LOOKUP program
// that hands every TCP connection to one of ports, whatever its local
// address and family, to the listener given for that port, before the
// kernel's own listener lookup and without SO_REUSEPORT selection
// (BPF_SK_LOOKUP_F_NO_REUSEPORT): a socket bound beside it in its
// SO_REUSEPORT group, to 0.0.0.0:port or to a specific address:port in the
// pod never sees those connections. It assigns with
// BPF_SK_LOOKUP_F_REPLACE, so the program attached last (a ztunnel taking
// over) wins over earlier ones. A port whose listener has closed is left
// to the kernel's lookup.
//
// The returned link keeps the program attached; closing it (or the
// process exiting) detaches it. The listeners go into a SOCKHASH map,
// which excludes a REUSEPORT_SOCKARRAY (both use the socket's user data):
// a listener has either this guard or guardListener's.
func guardNamespace(ns *os.File, ports map[int]net.Listener) (io.Closer, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "ambit_ztunnel",
		Type:       ebpf.SockHash,
		KeySize:    4,
		ValueSize:  8,
		MaxEntries: uint32(len(ports)),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: creating SOCKHASH map: %w", ErrGuardUnsupported, err)
	}
	defer m.Close()
	for port, ln := range ports {
		sc, ok := ln.(syscall.Conn)
		if !ok {
			return nil, fmt.Errorf("listener %T has no descriptor", ln)
		}
		rc, err := sc.SyscallConn()
		if err != nil {
			return nil, err
		}
		var uerr error
		if err := rc.Control(func(fd uintptr) { uerr = m.Update(uint32(port), uint64(fd), ebpf.UpdateAny) }); err != nil {
			return nil, err
		}
		if uerr != nil {
			return nil, fmt.Errorf("%w: putting listener %d into the SOCKHASH map: %w", ErrGuardUnsupported, port, uerr)
		}
	}

	lookup := asm.LoadMapPtr(asm.R1, 0)
	if err := lookup.AssociateMap(m); err != nil {
		return nil, err
	}
	const skPass = 1
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:       "ambit_ztunnel",
		Type:       ebpf.SkLookup,
		AttachType: ebpf.AttachSkLookup,
		License:    "Dual MIT/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1), // r6 = ctx
			asm.LoadMem(asm.R2, asm.R6, skLookupProtocol, asm.Word),
			asm.JNE.Imm(asm.R2, ipprotoTCP, "pass"),
			asm.LoadMem(asm.R2, asm.R6, skLookupLocalPort, asm.Word),
			asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word), // key = local port
			lookup, // r1 = map
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(), // r0 = ztunnel's socket (a reference) or NULL
			asm.JEq.Imm(asm.R0, 0, "pass"),
			asm.Mov.Reg(asm.R7, asm.R0),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Reg(asm.R2, asm.R7),
			asm.Mov.Imm(asm.R3, skLookupFlags),
			asm.FnSkAssign.Call(), // a failure (family, protocol) leaves the kernel's choice
			asm.Mov.Reg(asm.R1, asm.R7),
			asm.FnSkRelease.Call(),
			asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass"),
			asm.Return(),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: loading SK_LOOKUP program: %w", ErrGuardUnsupported, err)
	}
	defer prog.Close()
	var l link.Link
	var lerr error
	if err := withFile(ns, func(fd int) { l, lerr = link.AttachNetNs(fd, prog) }); err != nil {
		return nil, err
	}
	if lerr != nil {
		return nil, fmt.Errorf("%w: attaching SK_LOOKUP program to network namespace %s: %w", ErrGuardUnsupported, ns.Name(), lerr)
	}
	return l, nil
}

// withFile calls fn with f's descriptor, keeping f open meanwhile.
func withFile(f *os.File, fn func(fd int)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { fn(int(fd)) })
}
