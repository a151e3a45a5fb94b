package local

import (
	"context"
	"fmt"
	"net/http"
	"strings"
)

// AdminSource reads the admin endpoints of the local mesh's processes for
// the inspection commands (`ambitctl ztunnel-config --local`,
// `proxy-status --local`). It only reads: it takes no lock and changes
// nothing.
type AdminSource struct {
	Paths Paths
}

// Nodes lists the nodes of the running mesh, in topology order.
func (a AdminSource) Nodes() ([]string, error) {
	if err := RequirePrivileges(); err != nil {
		return nil, err
	}
	s, err := (&Engine{Paths: a.Paths}).openSession()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, n := range s.topo.Nodes {
		names = append(names, n.Name)
	}
	return names, nil
}

// ZtunnelGet GETs path from the admin endpoint (ZtunnelAdminPort, on
// localhost inside the node's network namespace) of node's ztunnel and
// returns the body of a 200 answer.
func (a AdminSource) ZtunnelGet(ctx context.Context, node, path string) ([]byte, error) {
	return a.get(ctx, NodeNetns(node), fmt.Sprintf("http://127.0.0.1:%d%s", ZtunnelAdminPort, path), "ztunnel-"+node)
}

// IstiodGet GETs path from istiod's HTTP address (IstiodReadinessAddr, in
// the backbone namespace) and returns the body of a 200 answer.
func (a AdminSource) IstiodGet(ctx context.Context, path string) ([]byte, error) {
	return a.get(ctx, BackboneNetns, "http://"+IstiodReadinessAddr()+path, "istiod")
}

func (a AdminSource) get(ctx context.Context, ns, url, proc string) ([]byte, error) {
	if err := RequirePrivileges(); err != nil {
		return nil, err
	}
	code, body, err := httpGetIn(ctx, ns, url)
	if err != nil {
		return nil, fmt.Errorf("GET %s in %s: %w (is the local mesh up and %s running? see `ambitctl local status`)", url, ns, err, proc)
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET %s in %s: status %d: %s", url, ns, code, strings.TrimSpace(string(body)))
	}
	return body, nil
}
