package state

import (
	"os"
	"testing"
)

// FuzzParseConfig: parsing never panics, and whatever parses can be
// validated, stored and dumped without panicking.
func FuzzParseConfig(f *testing.F) {
	sample, err := os.ReadFile("testdata/sample.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sample)
	f.Add([]byte(goodB))
	f.Add([]byte(`policies: [{name: p, namespace: ns, groups: [{rules: [{matches: [{sourceIps: ["10.0.0.0/8", {address: "fd00::"}, {address: 1}]}]}]}]}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		snap, err := ParseConfig(data)
		if err != nil {
			return
		}
		s := newStore()
		_ = s.Validate(snap)
		_ = s.Set(snap)
		_ = s.Dump()
	})
}
