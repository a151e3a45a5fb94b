package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/ambit-mesh/ambit/istiod/ca"
)

// run starts the CA and serves until ctx ends, then stops gracefully and
// returns nil. ready, if not nil, is called with the listen address once
// the root certificate is written and the listener is open.
func run(ctx context.Context, cfg Config, log *slog.Logger, ready func(net.Addr)) error {
	auth, err := ca.LoadOrCreate(ca.Options{TrustDomain: cfg.TrustDomain, CADir: cfg.CADir, StateDir: cfg.StateDir, Logger: log})
	if err != nil {
		return err
	}
	tokens, err := ca.LoadStaticTokens(cfg.TokenFile, cfg.TrustDomain)
	if err != nil {
		return err
	}
	srv, err := ca.NewServer(auth, tokens, ca.ServerOptions{DefaultTTL: cfg.CertTTL, MaxTTL: cfg.MaxCertTTL, Logger: log})
	if err != nil {
		return err
	}
	tlsConf, err := auth.ServingTLSConfig(cfg.ServingDNS, cfg.ServingIPs)
	if err != nil {
		return err
	}
	if cfg.RootCertOut != "" {
		if err := ca.WriteFileAtomic(cfg.RootCertOut, auth.RootsPEM(), 0o644); err != nil {
			return fmt.Errorf("writing root certificate: %w", err)
		}
	}
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.GRPCAddr, err)
	}
	log.Info("serving certificates", "addr", lis.Addr().String(), "trust_domain", cfg.TrustDomain,
		"cert_ttl", cfg.CertTTL, "max_cert_ttl", cfg.MaxCertTTL, "root_cert_out", cfg.RootCertOut)
	if ready != nil {
		ready(lis.Addr())
	}
	if err := srv.Serve(ctx, lis, tlsConf); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}
