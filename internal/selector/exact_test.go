package selector

import (
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
)

func TestExact(t *testing.T) {
	const u1 = "0f8fad5b-d9cb-469f-a165-70867728950e"
	guests := []driver.Guest{
		{Node: "n1", Name: "a", UUID: u1},
		{Node: "n1", Name: "b"},
		{Node: "n1", Name: "a,b"},
		{Node: "n1", Name: "-x"},
		{Node: "n1", Name: "%web%"},
		{Node: "n1", Name: "A"},
		{Node: "n2", Name: "a,b"},
		{Node: "n1", Name: strings.ToUpper(u1)},
	}
	names := func(gs []driver.Guest) string {
		var n []string
		for _, g := range gs {
			n = append(n, g.Node+"/"+g.Name)
		}
		return strings.Join(n, " ")
	}
	for _, tc := range []struct{ in, want string }{
		{"a,b", "n1/a,b n2/a,b"},
		{"a", "n1/a"}, // not "A": names are case-sensitive
		{"A", "n1/A"},
		{"-x", "n1/-x"},
		{"%web%", "n1/%web%"},
		{"web", ""},
		{u1, "n1/a"},
		{strings.ToUpper(u1), "n1/" + strings.ToUpper(u1)}, // a name wins over a UUID
		{"0f8fad5b-d9cb-469f-a165-70867728950f", ""},
		{"", ""},
	} {
		if got := names(Exact(guests, tc.in)); got != tc.want {
			t.Errorf("Exact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
