package charts

import (
	"fmt"
	"slices"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/ambit-mesh/ambit/deploy/images"
	"github.com/ambit-mesh/ambit/istiod/ca/casecret"
	"github.com/ambit-mesh/ambit/istiod/rbac"
	"github.com/ambit-mesh/ambit/istiod/rootcert"
)

// normalRules sorts each rule's lists and the rules, so that two grants
// compare equal when they allow the same.
func normalRules(rules []rbacv1.PolicyRule) []string {
	var out []string
	for _, r := range rules {
		out = append(out, fmt.Sprint(sorted(r.APIGroups), sorted(r.Resources), sorted(r.ResourceNames), sorted(r.Verbs), sorted(r.NonResourceURLs)))
	}
	sort.Strings(out)
	return out
}

// TestIstiodRBACIsIstiods checks that the chart grants istiod exactly the
// rules of package istiod/rbac, the set istiod's own tests run under.
func TestIstiodRBACIsIstiods(t *testing.T) {
	for _, c := range renderCases {
		t.Run(c.name, func(t *testing.T) {
			r := renderObjects(t, c.name, c.namespace)
			cr := r.clusterRoles["ambit-istiod-"+c.namespace]
			if cr == nil {
				t.Fatal("no istiod ClusterRole")
			}
			if diff := cmp.Diff(normalRules(rbac.ClusterRules()), normalRules(cr.Rules)); diff != "" {
				t.Errorf("istiod's ClusterRole is not istiod/rbac.ClusterRules (-rbac +chart):\n%s", diff)
			}
			d := r.deployments["istiod"]
			caSecret := argValue(t, "istiod", container(t, d.Spec.Template.Spec, "discovery").Args, "ca-secret")
			if diff := cmp.Diff(normalRules(rbac.NamespaceRules(caSecret)), normalRules(r.nsRoles["istiod"].Rules)); diff != "" {
				t.Errorf("istiod's Role is not istiod/rbac.NamespaceRules(%q) (-rbac +chart):\n%s", caSecret, diff)
			}
		})
	}
}

// TestDefaultsMatchTheirOwners checks the chart's defaults against the
// constants of the code that owns them.
func TestDefaultsMatchTheirOwners(t *testing.T) {
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	v := c.Values
	if hub := v["global"].(map[string]any)["hub"]; hub != images.DefaultHub {
		t.Errorf("global.hub %v, want deploy/images.DefaultHub %s (where make images tags)", hub, images.DefaultHub)
	}
	var specs []string
	for _, s := range images.Specs() {
		specs = append(specs, s.Name)
	}
	for _, comp := range []string{"istiod", "ztunnel", "cni", "waypoint"} {
		name := v[comp].(map[string]any)["image"].(map[string]any)["name"]
		if !slices.Contains(specs, fmt.Sprint(name)) {
			t.Errorf("%s.image.name %v is none of deploy/images' images %v", comp, name, specs)
		}
	}
	if got := v["istiod"].(map[string]any)["caSecret"]; got != casecret.DefaultName {
		t.Errorf("istiod.caSecret %v, want %s (istiod/ca/casecret.DefaultName)", got, casecret.DefaultName)
	}
	r := renderObjects(t, "default", "istio-system")
	zt := r.daemonSets["ztunnel"].Spec.Template.Spec
	if cm := volume(t, zt, "istiod-ca-cert").ConfigMap; cm == nil || cm.Name != rootcert.ConfigMapName {
		t.Errorf("ztunnel's root ConfigMap %+v, want %s (istiod/rootcert)", cm, rootcert.ConfigMapName)
	}
	if got := argValue(t, "ztunnel", container(t, zt, "ztunnel").Args, "ca-root"); got != "/var/run/secrets/istio/"+rootcert.DataKey {
		t.Errorf("ztunnel --ca-root %s does not read key %s of %s", got, rootcert.DataKey, rootcert.ConfigMapName)
	}
}
