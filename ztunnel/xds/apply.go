package xds

import (
	"errors"
	"fmt"
	"strings"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// Type URLs of workload discovery.
const (
	TypeAddress       = "type.googleapis.com/istio.workload.Address"
	TypeAuthorization = "type.googleapis.com/istio.security.Authorization"
)

// decoded is one response turned into a store delta.
type decoded struct {
	delta state.Delta
	// versions of the resources in delta.Upsert, by resource name.
	versions map[string]string
	// kindName maps a state.ResourceError's (Kind, Name) to the resource
	// name, to find which resources the store rejected.
	kindName map[[2]string]string
	removed  []string
	errs     []error
}

// decode turns a response into a delta. Resources that do not decode, are
// of the wrong type or whose name does not match their content are left out
// and reported in errs; the others are decoded.
func decode(resp *discovery.DeltaDiscoveryResponse) *decoded {
	d := &decoded{versions: map[string]string{}, kindName: map[[2]string]string{}, removed: resp.GetRemovedResources()}
	typeURL := resp.GetTypeUrl()
	for _, r := range resp.GetResources() {
		name := r.GetName()
		if a := r.GetResource(); a == nil || a.GetTypeUrl() != typeURL {
			d.errs = append(d.errs, fmt.Errorf("resource %q: payload type %q in a %s response", name, a.GetTypeUrl(), typeURL))
			continue
		}
		switch typeURL {
		case TypeAddress:
			addr := &workloadapi.Address{}
			if err := proto.Unmarshal(r.GetResource().GetValue(), addr); err != nil {
				d.errs = append(d.errs, fmt.Errorf("address %q does not decode: %w", name, err))
				continue
			}
			switch t := addr.GetType().(type) {
			case *workloadapi.Address_Workload:
				if uid := t.Workload.GetUid(); uid != name {
					d.errs = append(d.errs, fmt.Errorf("address %q holds workload uid %q; a workload's resource name is its uid", name, uid))
					continue
				}
				d.delta.Upsert.Workloads = append(d.delta.Upsert.Workloads, t.Workload)
				d.kindName[[2]string{"workload", name}] = name
			case *workloadapi.Address_Service:
				if key := state.ServiceKey(t.Service); key != name {
					d.errs = append(d.errs, fmt.Errorf("address %q holds service %q; a service's resource name is namespace/hostname", name, key))
					continue
				}
				d.delta.Upsert.Services = append(d.delta.Upsert.Services, t.Service)
				d.kindName[[2]string{"service", strings.Trim(name, "/")}] = name
			default:
				d.errs = append(d.errs, fmt.Errorf("address %q holds neither a workload nor a service", name))
				continue
			}
		case TypeAuthorization:
			p := &security.Authorization{}
			if err := proto.Unmarshal(r.GetResource().GetValue(), p); err != nil {
				d.errs = append(d.errs, fmt.Errorf("policy %q does not decode: %w", name, err))
				continue
			}
			if key := state.PolicyKey(p); key != name {
				d.errs = append(d.errs, fmt.Errorf("policy %q holds %q; a policy's resource name is namespace/name", name, key))
				continue
			}
			d.delta.Upsert.Policies = append(d.delta.Upsert.Policies, p)
			d.kindName[[2]string{"policy", strings.Trim(name, "/")}] = name
		}
		d.versions[name] = r.GetVersion()
	}
	switch typeURL {
	case TypeAddress:
		d.delta.RemoveAddresses = d.removed
	case TypeAuthorization:
		d.delta.RemovePolicies = d.removed
	}
	return d
}

// rejected returns the resource names the store's error rejects.
func (d *decoded) rejected(err error) []string {
	var out []string
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var re *state.ResourceError
		if errors.As(err, &re) {
			if n, ok := d.kindName[[2]string{re.Kind, re.Name}]; ok {
				out = append(out, n)
			}
		}
	}
	walk(err)
	return out
}
