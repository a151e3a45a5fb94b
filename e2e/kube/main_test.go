package kube

import (
	"testing"

	"github.com/ambit-mesh/ambit/e2e/kube/cluster"
)

// TestMain runs the package's tests against one cluster (cluster.Shared),
// stopped at the end.
func TestMain(m *testing.M) { cluster.Main(m, cluster.Options{}) }
