package capture

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/google/nftables"
)

// Backend programs capture rules in a pod's network namespace. ns is an open
// network-namespace file owned by the caller. Implementations are safe for
// concurrent use on different namespaces; calls on one namespace must not
// overlap.
type Backend interface {
	// Name is the mode that selects the backend ("nftables", "iptables").
	Name() string
	// Install makes the namespace's capture rules exactly Rules(cfg),
	// replacing any earlier version of ours, then verifies them.
	Install(ctx context.Context, ns *os.File, cfg Config) error
	// Verify reads the rules back and returns an error wrapping ErrMismatch
	// that names each missing, unexpected or changed rule.
	Verify(ctx context.Context, ns *os.File, cfg Config) error
	// Remove deletes everything Install created; nothing of ours is a success.
	Remove(ctx context.Context, ns *os.File) error
}

// Modes accepted by New.
const (
	ModeNFTables = "nftables"
	ModeIPTables = "iptables"
	ModeAuto     = "auto"
)

var (
	// ErrUnknownMode is returned by New for a mode it does not know.
	ErrUnknownMode = errors.New("unknown capture mode")
	// ErrUnsupported is returned by New when the host lacks what the mode needs.
	ErrUnsupported = errors.New("capture mode not supported on this host")
	// ErrMismatch is wrapped by Verify when the rules differ from the expected ones.
	ErrMismatch = errors.New("capture rules differ from the expected rules")
)

var (
	_ Backend = (*NFTables)(nil)
	_ Backend = (*IPTables)(nil)
)

// New returns the backend for mode: "nftables", "iptables", or "auto" (or
// empty), which picks nftables when the kernel supports it and iptables
// otherwise.
func New(mode string) (Backend, error) {
	switch mode {
	case ModeNFTables:
		if err := probeNFTables(); err != nil {
			return nil, fmt.Errorf("%w: nftables: %v; load the nf_tables kernel module (modprobe nf_tables) or use capture mode %q", ErrUnsupported, err, ModeIPTables)
		}
		return &NFTables{}, nil
	case ModeIPTables:
		ipt := &IPTables{}
		if err := ipt.probe(); err != nil {
			return nil, fmt.Errorf("%w: iptables: %v; install the iptables package (apt-get install iptables) or use capture mode %q", ErrUnsupported, err, ModeNFTables)
		}
		return ipt, nil
	case ModeAuto, "":
		nerr := probeNFTables()
		if nerr == nil {
			return &NFTables{}, nil
		}
		ipt := &IPTables{}
		ierr := ipt.probe()
		if ierr == nil {
			return ipt, nil
		}
		return nil, fmt.Errorf("%w: neither nftables (%v) nor iptables (%v) is usable; load nf_tables (modprobe nf_tables) or install the iptables package", ErrUnsupported, nerr, ierr)
	default:
		return nil, fmt.Errorf("%w %q: use %q, %q or %q", ErrUnknownMode, mode, ModeNFTables, ModeIPTables, ModeAuto)
	}
}

// probeNFTables checks that nf_tables answers in the caller's namespace.
func probeNFTables() error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	_, err = c.ListTablesOfFamily(nftables.TableFamilyINet)
	return err
}

func lookTool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found in PATH", name)
	}
	return p, nil
}
