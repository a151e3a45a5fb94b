package topology

import (
	"fmt"

	"sigs.k8s.io/yaml"
)

// ParseFragment decodes a topology fragment for `local apply` and `local
// delete`: the same schema as a topology file, but nodes may be omitted and
// the fragment is not validated on its own (validate the merged topology).
// Unknown fields are errors; defaults are applied as in Parse, except the
// trust domain, which stays empty when the fragment does not set it.
func ParseFragment(b []byte) (*Topology, error) {
	var t Topology
	if err := yaml.UnmarshalStrict(b, &t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	td := t.TrustDomain
	t.defaults()
	t.TrustDomain = td
	return &t, nil
}
