package state

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	"sigs.k8s.io/yaml"
)

// ErrConfig is wrapped by every local config parse error.
var ErrConfig = errors.New("invalid local config")

// LoadFile reads and parses a local config file (see ParseConfig). Errors
// name the file.
func LoadFile(path string) (Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Snapshot{}, fmt.Errorf("reading local config: %w", err)
	}
	snap, err := ParseConfig(data)
	if err != nil {
		return Snapshot{}, fmt.Errorf("local config %s: %w", path, err)
	}
	return snap, nil
}

// ParseConfig parses a local config document: YAML (or JSON) with the
// top-level lists `workloads`, `services` and `policies` (and `version`,
// written by Dump, ignored), each entry the
// protojson form of workloadapi.Workload, workloadapi.Service or
// security.Authorization (field names lowerCamel or snake_case, enums by
// name). Unknown fields are errors.
//
// One convenience: where the proto has IP bytes, write the IP as text.
//   - workload `addresses`: ["10.0.1.5", "fd00::5"]
//   - NetworkAddress `address` (service `addresses[]`, the `address` of a
//     `waypoint`, `networkGateway` or `weightedWaypoints[].destination`):
//     "10.96.0.10"
//   - policy `sourceIps`, `notSourceIps`, `destinationIps`,
//     `notDestinationIps`: each entry a string "10.0.0.0/8" or "10.0.0.1"
//     (a host), or an object {address: "10.0.0.0", length: 8} where a
//     missing length means a host (/32, /128), not /0.
//
// Text that is not an IP is left for protojson (which takes base64 bytes).
// The YAML is read as YAML 1.1: quote values such as y, n, yes, no, on and
// off, which are otherwise booleans.
// Parsing does not validate; Store.Validate does.
func ParseConfig(data []byte) (Snapshot, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return Snapshot{}, fmt.Errorf("%w: YAML: %v", ErrConfig, err)
	}
	var top map[string]any
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&top); err != nil {
		return Snapshot{}, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	for key := range top {
		switch key {
		case "workloads", "services", "policies":
		case "version": // written by Dump; ignored
		default:
			return Snapshot{}, fmt.Errorf("%w: unknown top-level key %q; want workloads, services, policies", ErrConfig, key)
		}
	}
	var snap Snapshot
	for _, key := range []string{"workloads", "services", "policies"} {
		val := top[key]
		if val == nil {
			continue
		}
		list, ok := val.([]any)
		if !ok {
			return Snapshot{}, fmt.Errorf("%w: %s: want a list", ErrConfig, key)
		}
		for i, item := range list {
			obj, ok := item.(map[string]any)
			if !ok {
				return Snapshot{}, fmt.Errorf("%w: %s[%d]: want an object", ErrConfig, key, i)
			}
			var msg proto.Message
			switch key {
			case "workloads":
				textToWorkload(obj)
				w := &workloadapi.Workload{}
				snap.Workloads = append(snap.Workloads, w)
				msg = w
			case "services":
				textToService(obj)
				s := &workloadapi.Service{}
				snap.Services = append(snap.Services, s)
				msg = s
			case "policies":
				if err := textToPolicy(obj); err != nil {
					return Snapshot{}, fmt.Errorf("%w: %s[%d]: %v", ErrConfig, key, i, err)
				}
				p := &security.Authorization{}
				snap.Policies = append(snap.Policies, p)
				msg = p
			}
			b, err := json.Marshal(obj)
			if err != nil {
				return Snapshot{}, fmt.Errorf("%w: %s[%d]: %v", ErrConfig, key, i, err)
			}
			if err := protojson.Unmarshal(b, msg); err != nil {
				return Snapshot{}, fmt.Errorf("%w: %s[%d]%s: %v", ErrConfig, key, i, describe(obj), err)
			}
		}
	}
	return snap, nil
}

// describe names a config entry by its uid, or namespace and name/hostname.
func describe(obj map[string]any) string {
	for _, k := range []string{"uid", "hostname", "name"} {
		if s, ok := obj[k].(string); ok && s != "" {
			if ns, ok := obj["namespace"].(string); ok && k != "uid" {
				s = ns + "/" + s
			}
			return fmt.Sprintf(" (%s)", s)
		}
	}
	return ""
}

// get returns obj's field under its lowerCamel or snake_case name.
func get(obj map[string]any, camel, snake string) (any, string) {
	if v, ok := obj[camel]; ok {
		return v, camel
	}
	if v, ok := obj[snake]; ok {
		return v, snake
	}
	return nil, ""
}

// ipToB64 converts IP text to protojson bytes; anything else is returned
// unchanged.
func ipToB64(v any) any {
	s, ok := v.(string)
	if !ok {
		return v
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return v
	}
	return base64.StdEncoding.EncodeToString(ip.AsSlice())
}

func textToWorkload(obj map[string]any) {
	if list, ok := obj["addresses"].([]any); ok {
		for i := range list {
			list[i] = ipToB64(list[i])
		}
	}
	textToGateway(obj["waypoint"])
	g, _ := get(obj, "networkGateway", "network_gateway")
	textToGateway(g)
}

func textToService(obj map[string]any) {
	if list, ok := obj["addresses"].([]any); ok {
		for _, na := range list {
			textToNetworkAddress(na)
		}
	}
	textToGateway(obj["waypoint"])
	ws, _ := get(obj, "weightedWaypoints", "weighted_waypoints")
	if list, ok := ws.([]any); ok {
		for _, w := range list {
			if m, ok := w.(map[string]any); ok {
				textToGateway(m["destination"])
			}
		}
	}
}

func textToNetworkAddress(v any) {
	if m, ok := v.(map[string]any); ok {
		if a, ok := m["address"]; ok {
			m["address"] = ipToB64(a)
		}
	}
}

func textToGateway(v any) {
	if m, ok := v.(map[string]any); ok {
		textToNetworkAddress(m["address"])
	}
}

var policyIPFields = [][2]string{
	{"sourceIps", "source_ips"},
	{"notSourceIps", "not_source_ips"},
	{"destinationIps", "destination_ips"},
	{"notDestinationIps", "not_destination_ips"},
}

func textToPolicy(obj map[string]any) error {
	for _, g := range asList(obj["groups"]) {
		for _, r := range asList(asMap(g)["rules"]) {
			for _, m := range asList(asMap(r)["matches"]) {
				mm := asMap(m)
				for _, f := range policyIPFields {
					v, key := get(mm, f[0], f[1])
					list := asList(v)
					for i, e := range list {
						conv, err := textToAddress(e)
						if err != nil {
							return fmt.Errorf("%s[%d]: %v", key, i, err)
						}
						list[i] = conv
					}
				}
			}
		}
	}
	return nil
}

// textToAddress converts "10.0.0.0/8", "10.0.0.1" or {address: "10.0.0.0",
// length: 8} to a security.Address in protojson form.
func textToAddress(e any) (any, error) {
	switch e := e.(type) {
	case string:
		p, err := netip.ParsePrefix(e)
		if err != nil {
			ip, err2 := netip.ParseAddr(e)
			if err2 != nil {
				return nil, fmt.Errorf("%q is neither a CIDR nor an IP", e)
			}
			p = netip.PrefixFrom(ip, ip.BitLen())
		}
		return map[string]any{"address": base64.StdEncoding.EncodeToString(p.Addr().AsSlice()), "length": p.Bits()}, nil
	case map[string]any:
		if s, ok := e["address"].(string); ok {
			if ip, err := netip.ParseAddr(s); err == nil {
				e["address"] = base64.StdEncoding.EncodeToString(ip.AsSlice())
				if _, ok := e["length"]; !ok {
					e["length"] = ip.BitLen()
				}
			}
		}
		return e, nil
	}
	return e, nil
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// Dump is the state in the local config format, for the admin
// /config_dump: it marshals to JSON that ParseConfig reads back.
type Dump struct {
	Version   uint64            `json:"version"`
	Workloads []json.RawMessage `json:"workloads"`
	Services  []json.RawMessage `json:"services"`
	Policies  []json.RawMessage `json:"policies"`
}

// Dump returns the current state (see View.Dump).
func (s *Store) Dump() Dump { return s.Load().Dump() }

// Dump returns the view in the local config format, sorted by resource
// name, IPs as text.
func (v *View) Dump() Dump {
	d := Dump{Version: v.version, Workloads: []json.RawMessage{}, Services: []json.RawMessage{}, Policies: []json.RawMessage{}}
	for _, w := range v.Workloads() {
		d.Workloads = append(d.Workloads, dumpOne(w, workloadToText))
	}
	for _, s := range v.Services() {
		d.Services = append(d.Services, dumpOne(s, serviceToText))
	}
	for _, p := range v.Policies() {
		d.Policies = append(d.Policies, dumpOne(p, policyToText))
	}
	return d
}

func dumpOne(m proto.Message, conv func(map[string]any)) json.RawMessage {
	b, err := protojson.Marshal(m)
	if err != nil {
		return errJSON(err)
	}
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil {
		return errJSON(err)
	}
	conv(obj)
	out, err := json.Marshal(obj)
	if err != nil {
		return errJSON(err)
	}
	return out
}

func errJSON(err error) json.RawMessage {
	b, _ := json.Marshal(map[string]string{"error": err.Error()})
	return b
}

// b64ToIP converts protojson bytes to IP text when they are 4 or 16 bytes.
func b64ToIP(v any) any {
	s, ok := v.(string)
	if !ok {
		return v
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return v
	}
	ip, ok := netip.AddrFromSlice(b)
	if !ok {
		return v
	}
	return ip.String()
}

func networkAddressToText(v any) {
	if m := asMap(v); m != nil {
		if a, ok := m["address"]; ok {
			m["address"] = b64ToIP(a)
		}
	}
}

func gatewayToText(v any) { networkAddressToText(asMap(v)["address"]) }

func workloadToText(obj map[string]any) {
	list := asList(obj["addresses"])
	for i := range list {
		list[i] = b64ToIP(list[i])
	}
	gatewayToText(obj["waypoint"])
	gatewayToText(obj["networkGateway"])
}

func serviceToText(obj map[string]any) {
	for _, na := range asList(obj["addresses"]) {
		networkAddressToText(na)
	}
	gatewayToText(obj["waypoint"])
	for _, w := range asList(obj["weightedWaypoints"]) {
		gatewayToText(asMap(w)["destination"])
	}
}

// policyToText writes each policy address as a CIDR string, so a length
// of 0 (omitted by protojson) survives the round trip.
func policyToText(obj map[string]any) {
	// Spell out the zero-valued enums protojson omits: they matter.
	if _, ok := obj["scope"]; !ok {
		obj["scope"] = security.Scope_GLOBAL.String()
	}
	if _, ok := obj["action"]; !ok {
		obj["action"] = security.Action_ALLOW.String()
	}
	for _, g := range asList(obj["groups"]) {
		for _, r := range asList(asMap(g)["rules"]) {
			for _, m := range asList(asMap(r)["matches"]) {
				mm := asMap(m)
				for _, f := range policyIPFields {
					list := asList(mm[f[0]])
					for i, e := range list {
						em := asMap(e)
						ipText, _ := b64ToIP(em["address"]).(string)
						ip, err := netip.ParseAddr(ipText)
						if err != nil {
							continue
						}
						bits := 0
						if n, ok := em["length"].(json.Number); ok {
							l, _ := n.Int64()
							bits = int(l)
						}
						list[i] = netip.PrefixFrom(ip, bits).String()
					}
				}
			}
		}
	}
}
