package selector

import (
	"slices"
	"testing"
)

func TestPlainNames(t *testing.T) {
	for _, c := range []struct {
		sel  string
		want []string
	}{
		{"web1", []string{"web1"}},
		{" web1 , db.2 ", []string{"web1", "db.2"}},
		{"Web1", []string{"Web1"}},
		{"web1,-web2", nil},
		{"web%", nil},
		{"%web", nil},
		{"@all", nil},
		{"all", nil},
		{"100", nil},
		{"100:200", nil},
		{"web1,@tag-prod", nil},
		{"@node-a", nil},
		{"123e4567-e89b-42d3-a456-426614174000", nil},
	} {
		s, err := Parse(c.sel)
		if err != nil {
			t.Fatalf("%q: %v", c.sel, err)
		}
		got, ok := s.PlainNames()
		if ok != (c.want != nil) || !slices.Equal(got, c.want) {
			t.Errorf("%q: PlainNames() = %q, %v; want %q", c.sel, got, ok, c.want)
		}
	}
}
