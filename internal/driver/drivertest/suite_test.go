package drivertest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"strings"
	"testing"
)

// TestConformanceCoversEveryCapability fails when package driver declares an interface
// the suite has no test for, so a new capability cannot go untested on every driver
// and wrapper.
func TestConformanceCoversEveryCapability(t *testing.T) {
	notCapabilities := map[string]bool{"Driver": true, "PreparedSnapshot": true}
	tested := map[string]bool{}
	for _, c := range capabilityTests {
		if tested[c.iface.Name()] {
			t.Errorf("capabilityTests lists %s twice", c.iface.Name())
		}
		tested[c.iface.Name()] = true
	}
	pkgs, err := parser.ParseDir(token.NewFileSet(), "..", func(fi fs.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range pkgs {
		for _, f := range p.Files {
			ast.Inspect(f, func(node ast.Node) bool {
				ts, ok := node.(*ast.TypeSpec)
				if !ok || !ts.Name.IsExported() {
					return true
				}
				if _, ok := ts.Type.(*ast.InterfaceType); ok {
					n++
					if !tested[ts.Name.Name] && !notCapabilities[ts.Name.Name] {
						t.Errorf("package driver declares %s, which the conformance suite does not test: add it to capabilityTests", ts.Name.Name)
					}
				}
				return true
			})
		}
	}
	if n < len(capabilityTests) {
		t.Errorf("found only %d interfaces in package driver", n)
	}
}
