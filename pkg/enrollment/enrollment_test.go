package enrollment_test

import (
	"testing"

	"github.com/ambit-mesh/ambit/pkg/enrollment"
)

func TestDecide(t *testing.T) {
	const k = enrollment.LabelDataplaneMode
	amb := map[string]string{k: "ambient"}
	none := map[string]string{k: "none"}
	for _, tc := range []struct {
		name    string
		pod, ns map[string]string
		want    bool
	}{
		{"no labels", nil, nil, false},
		{"namespace ambient", nil, amb, true},
		{"pod ambient", amb, nil, true},
		{"pod ambient, namespace none", amb, none, true},
		{"pod none wins over namespace ambient", none, amb, false},
		{"pod none alone", none, nil, false},
		{"namespace none does not enroll", nil, none, false},
		{"pod other value falls through to namespace", map[string]string{k: "sidecar"}, amb, true},
		{"pod other value, no namespace label", map[string]string{k: "sidecar"}, nil, false},
		{"values are exact", map[string]string{k: "Ambient"}, map[string]string{k: "ambient "}, false},
		{"other labels ignored", map[string]string{"app": "x"}, map[string]string{"istio-injection": "enabled"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := enrollment.Decide(tc.pod, tc.ns)
			if d.Enrolled != tc.want || d.Reason == "" {
				t.Errorf("Decide(%v, %v) = %+v, want enrolled=%v with a reason", tc.pod, tc.ns, d, tc.want)
			}
			if enrollment.Enrolled(tc.pod, tc.ns) != tc.want {
				t.Errorf("Enrolled disagrees with Decide")
			}
		})
	}
}
