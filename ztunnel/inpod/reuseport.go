package inpod

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// ErrGuardUnsupported wraps the kernel's refusal to load or attach a
// listener guard (no CAP_BPF or CAP_NET_ADMIN, no SK_LOOKUP or SK_REUSEPORT
// program type, ...).
var ErrGuardUnsupported = errors.New("listener guard unavailable (needs CAP_BPF and CAP_NET_ADMIN, and a kernel with SK_LOOKUP or SK_REUSEPORT programs)")

// guardListener attaches to ln's SO_REUSEPORT group a program that hands
// every new connection to ln and to no other socket of the group; when ln
// is gone the program drops them (SK_DROP). ln must be a listening plain
// TCP socket (not MPTCP) with SO_REUSEPORT.
//
// The program and its one-entry REUSEPORT_SOCKARRAY map are owned by the
// kernel once attached (the group holds the program, the program the
// map), so no descriptor stays open here. The kernel removes ln from the
// map when ln closes. The program stays attached to the group until
// another socket of the group attaches its own or every socket closes.
func guardListener(ln net.Listener) error {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return fmt.Errorf("listener %T has no descriptor", ln)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "ambit_ztunnel",
		Type:       ebpf.ReusePortSockArray,
		KeySize:    4,
		ValueSize:  8,
		MaxEntries: 1,
	})
	if err != nil {
		return fmt.Errorf("%w: creating REUSEPORT_SOCKARRAY map: %w", ErrGuardUnsupported, err)
	}
	defer m.Close()
	var uerr error
	if err := rc.Control(func(fd uintptr) { uerr = m.Update(uint32(0), uint64(fd), ebpf.UpdateAny) }); err != nil {
		return err
	}
	if uerr != nil {
		return fmt.Errorf("putting the listener into the reuseport map (is it plain TCP with SO_REUSEPORT?): %w", uerr)
	}

	ldMap := asm.LoadMapPtr(asm.R2, 0)
	if err := ldMap.AssociateMap(m); err != nil {
		return err
	}
	const skDrop, skPass = 0, 1
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "ambit_ztunnel",
		Type:    ebpf.SkReuseport,
		License: "Dual MIT/GPL",
		Instructions: asm.Instructions{
			// r1 = ctx (sk_reuseport_md), kept for the call.
			asm.StoreImm(asm.RFP, -4, 0, asm.Word), // key = 0
			ldMap,                                  // r2 = map
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -4), // r3 = &key
			asm.Mov.Imm(asm.R4, 0),  // flags
			asm.FnSkSelectReuseport.Call(),
			asm.JNE.Imm(asm.R0, 0, "drop"),
			asm.Mov.Imm(asm.R0, skPass),
			asm.Return(),
			asm.Mov.Imm(asm.R0, skDrop).WithSymbol("drop"),
			asm.Return(),
		},
	})
	if err != nil {
		return fmt.Errorf("%w: loading SK_REUSEPORT program: %w", ErrGuardUnsupported, err)
	}
	defer prog.Close()
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, prog.FD())
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("%w: attaching with SO_ATTACH_REUSEPORT_EBPF: %w", ErrGuardUnsupported, serr)
	}
	return nil
}
