package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/e2e/echo"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/hbone"
	"github.com/ambit-mesh/ambit/ztunnel/identity"
)

const trustDomain = "cluster.local"

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

// runTunnel starts the real istiod binary (the CA) and two HBONE tunnel
// endpoints that get their workload certificates from it over gRPC, sends a
// request through the tunnel to an echo server, and prints both verified
// identities and the bytes moved. It needs no root.
func runTunnel(istiodBin string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir, err := os.MkdirTemp("", "ambit-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// 1. The CA: the real istiod binary with a persisted self-signed root.
	caAddr, err := freePort()
	if err != nil {
		return err
	}
	token := "demo-token-" + fmt.Sprint(time.Now().UnixNano())
	tokens := fmt.Sprintf("tokens:\n- name: demo-node\n  token: %s\n  identities: [\"spiffe://%s/ns/*/sa/*\"]\n", token, trustDomain)
	if err := os.WriteFile(filepath.Join(dir, "tokens.yaml"), []byte(tokens), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(token), 0o600); err != nil {
		return err
	}
	rootFile := filepath.Join(dir, "root-cert.pem")
	step("starting istiod (CA) on %s", caAddr)
	istiod := exec.Command(istiodBin, "--trust-domain", trustDomain, "--state-dir", filepath.Join(dir, "istiod"),
		"--token-file", filepath.Join(dir, "tokens.yaml"), "--grpc-addr", caAddr, "--root-cert-out", rootFile,
		"--log-level", "warn", "--readiness-addr", "127.0.0.1:0")
	istiod.Stdout, istiod.Stderr = os.Stderr, os.Stderr
	if err := istiod.Start(); err != nil {
		return fmt.Errorf("starting %s: %w (run 'make build' first)", istiodBin, err)
	}
	defer func() {
		istiod.Process.Signal(syscall.SIGTERM)
		istiod.Wait()
	}()
	if err := waitFor(ctx, func() bool {
		_, err := os.Stat(rootFile)
		c, derr := net.DialTimeout("tcp", caAddr, time.Second)
		if derr == nil {
			c.Close()
		}
		return err == nil && derr == nil
	}); err != nil {
		return fmt.Errorf("istiod did not become ready: %w", err)
	}

	// 2. Two workload identities, each with its own certificate manager that
	// fetches from istiod over gRPC+TLS with the node's bearer token.
	client, _ := spiffe.New(trustDomain, "demo", "client")
	server, _ := spiffe.New(trustDomain, "demo", "server")
	newManager := func() (*identity.Manager, error) {
		src, err := identity.NewCAClient(identity.CAClientOptions{
			Address: caAddr, ServerName: "istiod.istio-system.svc", RootCAFile: rootFile,
			Token: identity.FileToken(filepath.Join(dir, "token")),
		})
		if err != nil {
			return nil, err
		}
		return identity.New(ctx, identity.Options{Source: src, Logger: slog.New(slog.DiscardHandler)})
	}
	mgrA, err := newManager()
	if err != nil {
		return err
	}
	defer mgrA.Close()
	mgrB, err := newManager()
	if err != nil {
		return err
	}
	defer mgrB.Close()
	for _, x := range []struct {
		m  *identity.Manager
		id spiffe.ID
	}{{mgrA, client}, {mgrB, server}} {
		cert, err := x.m.GetCertificate(ctx, x.id)
		if err != nil {
			return fmt.Errorf("certificate for %s: %w", x.id, err)
		}
		step("istiod issued %s (expires %s)", x.id, cert.Leaf.NotAfter.Format(time.RFC3339))
	}

	// 3. The application server and the receiving tunnel endpoint (B).
	echoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	echoCtx, stopEcho := context.WithCancel(ctx)
	defer stopEcho()
	go (&echo.Server{Name: "echo-server", Logger: slog.New(slog.DiscardHandler)}).Run(echoCtx, echo.Listeners{TCP: echoLn})
	echoAddr := netip.MustParseAddrPort(echoLn.Addr().String())

	var seenMu sync.Mutex
	var seenPeer spiffe.ID
	authorize := func(_ context.Context, req *hbone.Request) (netip.AddrPort, error) {
		seenMu.Lock()
		seenPeer = req.Peer
		seenMu.Unlock()
		if req.Authority != echoAddr {
			return netip.AddrPort{}, fmt.Errorf("%w: %s", hbone.ErrNotServed, req.Authority)
		}
		return echoAddr, nil
	}
	srv, err := hbone.NewServer(hbone.ServerConfig{
		TrustDomain: trustDomain,
		TrustBundle: mgrB.Roots,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return mgrB.GetCertificate(ctx, server)
		},
		Handler: hbone.RelayHandler(authorize, nil),
	})
	if err != nil {
		return err
	}
	hboneLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go srv.Serve(hboneLn)
	defer srv.Close()
	step("tunnel endpoint B (HBONE server) on %s as %s", hboneLn.Addr(), server)

	// 4. The sending tunnel endpoint (A): a pool that proves it is the client
	// and requires the server to prove it is the server.
	pool, err := hbone.NewPool(hbone.PoolConfig{
		TrustBundle:       mgrA.Roots,
		ClientCertificate: func(src spiffe.ID) (*tls.Certificate, error) { return mgrA.GetCertificate(ctx, src) },
	})
	if err != nil {
		return err
	}
	defer pool.Close()
	key := hbone.Key{Source: client, Destination: server, Addr: netip.MustParseAddrPort(hboneLn.Addr().String())}
	stream, err := pool.Dial(ctx, key, echoAddr, hbone.Headers{Forwarded: `for="127.0.0.1"`})
	if err != nil {
		return err
	}
	step("tunnel endpoint A opened CONNECT %s via %s (server proved %s)", echoAddr, key.Addr, server)
	request := "hello through HBONE\n"
	if _, err := io.WriteString(stream, request); err != nil {
		return fmt.Errorf("writing through the tunnel: %w", err)
	}
	if err := stream.CloseWrite(); err != nil {
		return err
	}
	answer, err := bufio.NewReader(stream).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the answer through the tunnel: %w", err)
	}
	stream.Close()

	seenMu.Lock()
	peer := seenPeer
	seenMu.Unlock()
	if peer != client {
		return fmt.Errorf("server saw peer %q, want %q", peer, client)
	}
	fmt.Println()
	fmt.Printf("request:  %q\n", strings.TrimSpace(request))
	fmt.Printf("answer:   %q\n", strings.TrimSpace(answer))
	fmt.Printf("endpoint B verified the client's identity: %s\n", peer)
	fmt.Printf("endpoint A verified the server's identity: %s\n", server)
	fmt.Printf("bytes moved: %d sent, %d received (application bytes inside the mTLS HTTP/2 stream)\n", len(request), len(answer))
	if !strings.Contains(answer, "echo=hello through HBONE") {
		return errors.New("answer does not echo the request")
	}
	fmt.Println("\nOK: the request crossed an mTLS HBONE tunnel with SPIFFE identities issued by istiod.")
	return nil
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitFor polls cond every 50ms until it holds or ctx ends.
func waitFor(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
