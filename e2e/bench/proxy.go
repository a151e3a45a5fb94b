package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"time"

	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/pkg/spiffe"
	"github.com/ambit-mesh/ambit/ztunnel/hbone"
)

// proxyAddrs is what the proxy child reports on stdout once it listens.
type proxyAddrs struct {
	// Warm forwards each accepted connection through the shared pool to the
	// target named by the listener (see targets).
	Warm map[string]string `json:"warm"`
	// Cold forwards each accepted connection through a fresh pool, so every
	// connection pays TCP + TLS + HTTP/2 setup.
	Cold map[string]string `json:"cold"`
}

var (
	benchClient = spiffe.ID{TrustDomain: "cluster.local", Namespace: "bench", ServiceAccount: "client"}
	benchServer = spiffe.ID{TrustDomain: "cluster.local", Namespace: "bench", ServiceAccount: "server"}
)

// runProxies is the child process: client-side proxy A (TCP listeners that
// open HBONE streams) and server-side proxy B (the HBONE server relaying to
// the real targets), both in this process so its CPU time is the proxies'
// cost. targets maps a name to the address B relays to. It serves until
// stdin closes. With AMBIT_BENCH_CPUPROFILE=path it writes a CPU profile of
// the proxies there.
func runProxies(targets map[string]string) error {
	auth, err := ca.NewSelfSigned("cluster.local")
	if err != nil {
		return err
	}
	issue := func(id spiffe.ID) (*tls.Certificate, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		chain, err := auth.Issue(key.Public(), id, time.Hour)
		if err != nil {
			return nil, err
		}
		c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
		for _, x := range chain[:len(chain)-1] {
			c.Certificate = append(c.Certificate, x.Raw)
		}
		return c, nil
	}
	clientCert, err := issue(benchClient)
	if err != nil {
		return err
	}
	serverCert, err := issue(benchServer)
	if err != nil {
		return err
	}
	roots := func() *x509.CertPool { return auth.RootPool() }

	allowed := map[netip.AddrPort]bool{}
	for _, t := range targets {
		allowed[netip.MustParseAddrPort(t)] = true
	}
	srv, err := hbone.NewServer(hbone.ServerConfig{
		TrustDomain:    "cluster.local",
		TrustBundle:    roots,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serverCert, nil },
		Handler: hbone.RelayHandler(func(_ context.Context, req *hbone.Request) (netip.AddrPort, error) {
			if !allowed[req.Authority] {
				return netip.AddrPort{}, fmt.Errorf("%w: %s", hbone.ErrNotServed, req.Authority)
			}
			return req.Authority, nil
		}, nil),
	})
	if err != nil {
		return err
	}
	hboneLn, err := listenTCP()
	if err != nil {
		return err
	}
	go srv.Serve(hboneLn)
	hboneAddr := netip.MustParseAddrPort(hboneLn.Addr().String())
	key := hbone.Key{Source: benchClient, Destination: benchServer, Addr: hboneAddr}
	poolCfg := hbone.PoolConfig{
		TrustBundle:       roots,
		ClientCertificate: func(spiffe.ID) (*tls.Certificate, error) { return clientCert, nil },
	}
	shared, err := hbone.NewPool(poolCfg)
	if err != nil {
		return err
	}

	out := proxyAddrs{Warm: map[string]string{}, Cold: map[string]string{}}
	for name, t := range targets {
		target := netip.MustParseAddrPort(t)
		warm, err := listenTCP()
		if err != nil {
			return err
		}
		go forward(warm, func() (*hbone.Pool, bool) { return shared, false }, key, target)
		out.Warm[name] = warm.Addr().String()
		cold, err := listenTCP()
		if err != nil {
			return err
		}
		go forward(cold, func() (*hbone.Pool, bool) {
			p, _ := hbone.NewPool(poolCfg)
			return p, true
		}, key, target)
		out.Cold[name] = cold.Addr().String()
	}
	if path := os.Getenv("AMBIT_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return err
	}
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// forward serves ln: every connection is relayed through an HBONE stream to
// target, from the pool pick returns (closed afterwards when fresh).
func forward(ln net.Listener, pick func() (*hbone.Pool, bool), key hbone.Key, target netip.AddrPort) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			pool, fresh := pick()
			if fresh {
				defer pool.Close()
			}
			s, err := pool.Dial(context.Background(), key, target, hbone.Headers{Forwarded: `for="127.0.0.1"`})
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench proxy:", err)
				c.Close()
				return
			}
			hbone.Relay(s, c)
		}()
	}
}

func listenTCP() (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	return lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
}
