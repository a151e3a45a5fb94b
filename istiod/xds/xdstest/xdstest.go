// Package xdstest runs istiod's workload discovery server over real TLS on
// loopback and generates meshes of Istio workload API resources, for tests
// and the benchmark program (it does not import package testing).
package xdstest

import (
	"crypto/x509"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/istiod/ca"
	"github.com/ambit-mesh/ambit/istiod/xds"
)

// ServerName is the DNS name in the serving certificate.
const ServerName = "istiod.istio-system.svc"

// Istiod is a running gRPC server over TLS with the xDS server registered.
type Istiod struct {
	XDS *xds.Server
	// Addr is the listening 127.0.0.1:port.
	Addr string
	// Authority made the serving certificate; RootCAs verify it as
	// ServerName.
	Authority *ca.Authority
	RootCAs   *x509.CertPool
	gs        *grpc.Server
	done      chan struct{}
}

// Options configure Start.
type Options struct {
	// Addr to listen on; default 127.0.0.1:0. Restart an istiod on the
	// same address by passing the old Addr (and Authority).
	Addr string
	// Authority defaults to a new self-signed root for cluster.local.
	Authority *ca.Authority
	// XDS configures the xDS server.
	XDS xds.Options
	// ServerOptions are appended to the grpc.Server's.
	ServerOptions []grpc.ServerOption
}

// Start listens and serves until Stop.
func Start(opts Options) (*Istiod, error) {
	auth := opts.Authority
	if auth == nil {
		var err error
		if auth, err = ca.NewSelfSigned("cluster.local"); err != nil {
			return nil, err
		}
	}
	tlsConf, err := auth.ServingTLSConfig([]string{ServerName}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	xs, err := xds.New(opts.XDS)
	if err != nil {
		return nil, err
	}
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("xdstest: listening on %s: %w", addr, err)
	}
	gs := grpc.NewServer(append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(tlsConf))}, opts.ServerOptions...)...)
	xs.Register(gs)
	d := &Istiod{XDS: xs, Addr: lis.Addr().String(), Authority: auth, RootCAs: auth.RootPool(), gs: gs, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		_ = gs.Serve(lis)
	}()
	return d, nil
}

// Stop closes the listener and every stream at once (as a crash would, for
// the clients) and waits for the server to return.
func (d *Istiod) Stop() {
	d.gs.Stop()
	<-d.done
}

// Mesh returns a mesh of workloads pods, services services and policies
// authorization policies, spread over namespaces; every workload belongs to
// one service and names one policy of its namespace. Resource i is the same
// in every call, so Mesh can stand for a desired state rebuilt from scratch.
func Mesh(workloads, services, policies int) xds.Resources {
	r := xds.Resources{
		Addresses:      make(map[string]*workloadapi.Address, workloads+services),
		Authorizations: make(map[string]*security.Authorization, policies),
	}
	for i := range workloads {
		a := Workload(i, services, policies, 0)
		r.Addresses[xds.AddressKey(a)] = a
	}
	for i := range services {
		a := Service(i)
		r.Addresses[xds.AddressKey(a)] = a
	}
	for i := range policies {
		p := Policy(i, 0)
		r.Authorizations[xds.AuthorizationKey(p)] = p
	}
	return r
}

const namespaces = 50

func ns(i int) string { return fmt.Sprintf("ns-%d", i%namespaces) }

// Workload returns workload i (in a mesh of services services and policies
// policies) at revision rev: changing rev changes the resource.
func Workload(i, services, policies, rev int) *workloadapi.Address {
	n := ns(i)
	w := &workloadapi.Workload{
		Uid:               fmt.Sprintf("Kubernetes//Pod/%s/app-%d-7d9f8c6b5-x%05d", n, i, i),
		Name:              fmt.Sprintf("app-%d-7d9f8c6b5-x%05d", i, i),
		Namespace:         n,
		Addresses:         [][]byte{{10, byte(i >> 16), byte(i >> 8), byte(i)}},
		Network:           "",
		TunnelProtocol:    workloadapi.TunnelProtocol_HBONE,
		TrustDomain:       "cluster.local",
		ServiceAccount:    fmt.Sprintf("app-%d", i%100),
		Node:              fmt.Sprintf("node-%d", i%100),
		CanonicalName:     fmt.Sprintf("app-%d", i),
		CanonicalRevision: fmt.Sprintf("v%d", rev),
		WorkloadType:      workloadapi.WorkloadType_POD,
		WorkloadName:      fmt.Sprintf("app-%d", i),
		Status:            workloadapi.WorkloadStatus_HEALTHY,
		ClusterId:         "Kubernetes",
		Locality:          &workloadapi.Locality{Region: "region-1", Zone: fmt.Sprintf("zone-%d", i%3)},
		Capacity:          wrapperspb.UInt32(1),
		Waypoint: &workloadapi.GatewayAddress{
			Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: n, Hostname: "waypoint." + n + ".svc.cluster.local"}},
			HboneMtlsPort: 15008,
		},
	}
	if services > 0 {
		s := i % services
		w.Services = map[string]*workloadapi.PortList{
			fmt.Sprintf("%s/svc-%d.%s.svc.cluster.local", ns(s), s, ns(s)): {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}},
		}
	}
	if policies > 0 {
		w.AuthorizationPolicies = []string{fmt.Sprintf("%s/policy-%d", n, i%policies)}
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

// Service returns service i.
func Service(i int) *workloadapi.Address {
	n := ns(i)
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
		Name:      fmt.Sprintf("svc-%d", i),
		Namespace: n,
		Hostname:  fmt.Sprintf("svc-%d.%s.svc.cluster.local", i, n),
		Addresses: []*workloadapi.NetworkAddress{{Address: []byte{172, 16, byte(i >> 8), byte(i)}}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 443, TargetPort: 8443}},
	}}}
}

// Policy returns policy i at revision rev.
func Policy(i, rev int) *security.Authorization {
	n := ns(i)
	return &security.Authorization{
		Name:      fmt.Sprintf("policy-%d", i),
		Namespace: n,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_ALLOW,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{
			Principals:       []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/client-%d", n, rev)}}},
			DestinationPorts: []uint32{8080},
		}}}}}},
	}
}
