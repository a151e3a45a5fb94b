// Package version holds the version every Ambit binary reports. It is set
// at build time with
//
//	-ldflags "-X github.com/ambit-mesh/ambit/pkg/version.Version=<v>"
//
// (make build and make images do so from the Makefile's VERSION); a plain
// go build reports Dev.
package version

// Dev is the version of a build that did not set one.
const Dev = "0.1.0-dev"

// Version is this binary's version.
var Version = Dev
