// Package charts embeds Ambit's Helm chart (deploy/charts/ambit) and renders
// it with the Helm SDK, so ambitctl installs exactly the chart the tests
// check and nothing is read from disk or the network at run time.
//
// # Contract
//
//   - Load returns the chart as Helm's chart/v2 type, ready for
//     action.Install / action.Upgrade. Each call returns a fresh copy; callers
//     may modify it.
//   - Render returns what `helm template RELEASE deploy/charts/ambit -n NS`
//     prints for the given user values (merged over values.yaml), CRDs
//     excluded: Kubernetes objects as multi-document YAML, each headed by a
//     "# Source:" comment, in Helm's install order. Values are checked
//     against values.schema.json first; an error names the field.
//   - CRDs returns the chart's crds/ files concatenated: the CustomResource
//     Definitions Ambit reads, to apply before Render's objects.
//
// # The chart
//
// crds/ is generated (`make generate`, gencrds) from the CRD YAML of the
// istio.io/istio and sigs.k8s.io/gateway-api versions go.mod pins: Istio's
// security.istio.io and networking.istio.io kinds istiod reads or will read
// for waypoints, and Gateway API's standard channel. Helm installs crds/ on
// first install only and never upgrades or deletes them: an upgrade applies
// CRDs() itself, before the new objects.
//
// templates/ holds istiod (Deployment, Service, PodDisruptionBudget,
// optional HorizontalPodAutoscaler), the ztunnel and cni-agent DaemonSets,
// and a ServiceAccount and least-privilege RBAC per component (ztunnel has
// no Kubernetes API rights). Object names are fixed (istiod, ztunnel,
// cni-agent; cluster-scoped ones ambit-<component>-<namespace>): one mesh
// per cluster, as Istio's charts. The containers' args use the binaries'
// flag names (istiod, ztunnel and cni-agent config.go) verbatim; the tests
// check that they exist and that the components' settings agree.
//
// Ports: istiod's Service serves 15012 (certificates and xDS, gRPC over
// TLS) and 15014 (istiod's readiness and debug address: /ready,
// /debug/syncz). ztunnel serves 15020 (metrics) and 15021 (readiness) in its
// pod network, 15000 (admin) on its loopback.
//
// # Waypoint defaults
//
// The ConfigMap ambit-waypoint in the release namespace is what the
// waypoint controller gives each waypoint Deployment it creates: key image
// (<hub>/<name>:<tag>), key imagePullPolicy, and key resources (YAML of a
// core/v1 ResourceRequirements).
package charts
