package selector

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
)

var guests = []driver.Guest{
	{Node: "pve1", ID: 100, Name: "web1", UUID: "0c6e1d7a-1b2c-4d5e-8f90-a1b2c3d4e5f6", Tags: []string{"prod", "web"}, Pools: []string{"prod"}},
	{Node: "pve1", ID: 101, Name: "web2", UUID: "1c6e1d7a-1b2c-4d5e-8f90-a1b2c3d4e5f6", Tags: []string{"Prod"}, Pools: []string{"prod/web"}},
	{Node: "pve2", ID: 150, Name: "db-main", UUID: "2c6e1d7a-1b2c-4d5e-8f90-a1b2c3d4e5f6", Tags: []string{"db"}, Pools: []string{"Prod/DB/primary"}},
	{Node: "PVE2", ID: 200, Name: "DB-replica", UUID: "3C6E1D7A-1B2C-4D5E-8F90-A1B2C3D4E5F6", Pools: []string{"production"}},
	{Node: "pve2", ID: 250, Name: "mainframe", Template: true},
	{Node: "pve3", ID: 299, Name: "testweb", Pools: []string{"test"}},
	{Node: "pve3", ID: 300, Name: "web1"},                                             // PVE names are not unique
	{Node: "kvm1", Name: "libvirt-off", UUID: "4c6e1d7a-1b2c-4d5e-8f90-a1b2c3d4e5f6"}, // ID 0: not running
}

func names(gs []driver.Guest) []string {
	var out []string
	for _, g := range gs {
		out = append(out, g.Node+":"+g.Name)
	}
	return out
}

func TestSelect(t *testing.T) {
	all := names(guests)
	cases := []struct {
		sel, norm string
		want      []string
		unmatched []string
	}{
		{"all", "@all", all, nil},
		{"@all", "@all", all, nil},
		{"ALL", "@all", all, nil},
		{"@ALL", "@all", all, nil},
		{"all-pve1", "@node-pve1", []string{"pve1:web1", "pve1:web2"}, nil},
		{"@all-PVE2", "@node-PVE2", []string{"pve2:db-main", "PVE2:DB-replica", "pve2:mainframe"}, nil},
		{"@node-pve3", "@node-pve3", []string{"pve3:testweb", "pve3:web1"}, nil},
		{"@NODE-pve3", "@node-pve3", []string{"pve3:testweb", "pve3:web1"}, nil},
		{"@pool-prod", "@pool-prod", []string{"pve1:web1", "pve1:web2", "pve2:db-main"}, nil},
		{"@pool-PROD/db", "@pool-PROD/db", []string{"pve2:db-main"}, nil},
		{"@pool-prod/", "@pool-prod", []string{"pve1:web1", "pve1:web2", "pve2:db-main"}, nil},
		{"@pool-prod/db/primary", "@pool-prod/db/primary", []string{"pve2:db-main"}, nil},
		{"@pool-production", "@pool-production", []string{"PVE2:DB-replica"}, nil},
		{"@pool-prod/web", "@pool-prod/web", []string{"pve1:web2"}, nil},
		{"@tag-prod", "@tag-prod", []string{"pve1:web1", "pve1:web2"}, nil},
		{"@TAG-DB", "@tag-DB", []string{"pve2:db-main"}, nil},
		{"100", "100", []string{"pve1:web1"}, nil},
		{"0100", "100", []string{"pve1:web1"}, nil},
		{"100:150", "100:150", []string{"pve1:web1", "pve1:web2", "pve2:db-main"}, nil},
		{"299:299", "299:299", []string{"pve3:testweb"}, nil},
		{"0:100", "0:100", []string{"pve1:web1"}, nil},
		{"0,100", "0,100", []string{"pve1:web1"}, []string{"0"}},
		{"3c6e1d7a-1b2c-4d5e-8f90-a1b2c3d4e5f6", "3c6e1d7a-1b2c-4d5e-8f90-a1b2c3d4e5f6", []string{"PVE2:DB-replica"}, nil},
		{"0C6E1D7A-1B2C-4D5E-8F90-A1B2C3D4E5F6", "0c6e1d7a-1b2c-4d5e-8f90-a1b2c3d4e5f6", []string{"pve1:web1"}, nil},
		{"4c6e1d7a-1b2c-4d5e-8f90-a1b2c3d4e5f6", "4c6e1d7a-1b2c-4d5e-8f90-a1b2c3d4e5f6", []string{"kvm1:libvirt-off"}, nil},
		// The documented wildcard meanings (cv4pve-autosnap swaps the last two).
		{"%main%", "%main%", []string{"pve2:db-main", "pve2:mainframe"}, nil},
		{"%MAIN", "%MAIN", []string{"pve2:db-main"}, nil},
		{"main%", "main%", []string{"pve2:mainframe"}, nil},
		{"web%", "web%", []string{"pve1:web1", "pve1:web2", "pve3:web1"}, nil},
		{"%web", "%web", []string{"pve3:testweb"}, nil},
		{"%web%", "%web%", []string{"pve1:web1", "pve1:web2", "pve3:testweb", "pve3:web1"}, nil},
		{"WEB1", "WEB1", []string{"pve1:web1", "pve3:web1"}, nil},
		{"db-replica", "db-replica", []string{"PVE2:DB-replica"}, nil},
		{"libvirt-off", "libvirt-off", []string{"kvm1:libvirt-off"}, nil},
		// Order of first inclusion, then input order; each guest once.
		{"testweb,100,web%", "testweb,100,web%", []string{"pve3:testweb", "pve1:web1", "pve1:web2", "pve3:web1"}, nil},
		{"150, 100 ,150", "150,100,150", []string{"pve2:db-main", "pve1:web1"}, nil},
		// Exclusions win wherever they stand.
		{"@all,-@node-pve1,-libvirt-off", "@all,-@node-pve1,-libvirt-off", []string{"pve2:db-main", "PVE2:DB-replica", "pve2:mainframe", "pve3:testweb", "pve3:web1"}, nil},
		{"-web1,@tag-prod", "-web1,@tag-prod", []string{"pve1:web2"}, nil},
		{"@pool-prod,-@pool-prod/web", "@pool-prod,-@pool-prod/web", []string{"pve1:web1", "pve2:db-main"}, nil},
		{"@all,-%web%,-all-pve2", "@all,-%web%,-@node-pve2", []string{"kvm1:libvirt-off"}, nil},
		{"- 100, 100:101", "-100,100:101", []string{"pve1:web2"}, nil},
		{"@all,-0C6E1D7A-1B2C-4D5E-8F90-A1B2C3D4E5F6,-@tag-db,-web2", "@all,-0c6e1d7a-1b2c-4d5e-8f90-a1b2c3d4e5f6,-@tag-db,-web2", []string{"PVE2:DB-replica", "pve2:mainframe", "pve3:testweb", "pve3:web1", "kvm1:libvirt-off"}, nil},
		// -200:299 only excludes: it must not add ids below 200 (cv4pve-autosnap does).
		{"@pool-prod,-200:299", "@pool-prod,-200:299", []string{"pve1:web1", "pve1:web2", "pve2:db-main"}, nil},
		{"web1,-200:299", "web1,-200:299", []string{"pve1:web1", "pve3:web1"}, nil},
		{"@node-pve3,-200:299", "@node-pve3,-200:299", []string{"pve3:web1"}, nil},
		// Unmatched include tokens are reported; excluded ones are not.
		{"100,nosuch,@tag-none,-alsonot", "100,nosuch,@tag-none,-alsonot", []string{"pve1:web1"}, []string{"nosuch", "@tag-none"}},
		{"100,@pool-pro", "100,@pool-pro", []string{"pve1:web1"}, []string{"@pool-pro"}},
	}
	for _, c := range cases {
		t.Run(c.sel, func(t *testing.T) {
			s, err := Parse(c.sel)
			if err != nil {
				t.Fatal(err)
			}
			if s.String() != c.norm {
				t.Errorf("String() = %q, want %q", s.String(), c.norm)
			}
			res, err := s.Select(guests)
			if err != nil {
				t.Fatal(err)
			}
			if got := names(res.Guests); !slices.Equal(got, c.want) {
				t.Errorf("Guests = %q\nwant %q", got, c.want)
			}
			if !slices.Equal(res.Unmatched, c.unmatched) {
				t.Errorf("Unmatched = %q, want %q", res.Unmatched, c.unmatched)
			}
		})
	}
}

func TestSelectKeepsTemplates(t *testing.T) {
	s, _ := Parse("mainframe")
	res, err := s.Select(guests)
	if err != nil || len(res.Guests) != 1 || !res.Guests[0].Template {
		t.Errorf("Select(mainframe) = %v, %v", res, err)
	}
}

func TestSelectDeduplicatesByKey(t *testing.T) {
	// The same guest listed twice, e.g. seen through two connections.
	gs := []driver.Guest{guests[0], guests[0], guests[1]}
	s, _ := Parse("@all")
	res, err := s.Select(gs)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(res.Guests); !slices.Equal(got, []string{"pve1:web1", "pve1:web2"}) {
		t.Errorf("Guests = %q", got)
	}
}

func TestSelectNoMatch(t *testing.T) {
	cases := []struct{ sel, want string }{
		{"nosuch", `guest selection "nosuch" matches none of the 8 guests found`},
		{"999,@tag-x", `"999,@tag-x" matches none`},
		{"0", `"0" matches none`},
		{"web1,-%web%", `guest selection "web1,-%web%" excludes all 2 guests it includes`},
		{"@all,-@all", "excludes all 8 guests"},
	}
	for _, c := range cases {
		t.Run(c.sel, func(t *testing.T) {
			s, err := Parse(c.sel)
			if err != nil {
				t.Fatal(err)
			}
			res, err := s.Select(guests)
			if !errors.Is(err, ErrNoMatch) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Select = %v; want ErrNoMatch containing %q", err, c.want)
			}
			if len(res.Guests) != 0 {
				t.Errorf("Guests = %v", res.Guests)
			}
		})
	}
	s, _ := Parse("@all")
	if _, err := s.Select(nil); !errors.Is(err, ErrNoMatch) {
		t.Errorf("Select(nil) = %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct{ sel, want string }{
		{"", "empty guest selection"},
		{"  ", "empty guest selection"},
		{"100,", `token 2: empty token`},
		{",100", `token 1: empty token`},
		{"100,,101", `token 2: empty token`},
		{"100, ,101", `token 2: empty token`},
		{"-", `"-" excludes nothing`},
		{"100,--101", `"--101": exclude with a single '-'`},
		{"@something-else", `unknown selection "@something-else": valid forms are all, @all, all-NODE, @all-NODE, @node-NODE, @pool-NAME, @tag-NAME, ID, FIRST:LAST, UUID, %TEXT%, TEXT%, %TEXT, NAME`},
		{"@pve1", "unknown selection"},
		{"@", "unknown selection"},
		{"100,-@foo-x", `unknown selection "@foo-x"`},
		{"all-", `"all-" names nothing: use all-NODE`},
		{"@node-", "names nothing: use @node-NODE"},
		{"@pool-/", "names nothing: use @pool-NAME"},
		{"@tag- ", "names nothing"},
		{"@all-", "names nothing"},
		{"200:100", `bad range "200:100": use FIRST:LAST with FIRST ≤ LAST`},
		{"100:", `bad range "100:"`},
		{":100", `bad range ":100"`},
		{"1:2:3", `bad range "1:2:3"`},
		{":", `bad range ":"`},
		{"99999999999999999999", "out of range"},
		{"1:99999999999999999999", "out of range"},
		{"%", "matches every name"},
		{"%%", "matches every name"},
		{"a%b", "% may only stand at the start"},
		{"%a%b%", "% may only stand at the start"},
		{"-100", `only excludes: say what to include too, e.g. @all,-100`},
		{"-100,-web1", "only excludes"},
	}
	for _, c := range cases {
		t.Run(c.sel, func(t *testing.T) {
			s, err := Parse(c.sel)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Parse(%q) = %v, %v; want error containing %q", c.sel, s, err, c.want)
			}
		})
	}
}

func TestStringRoundTrip(t *testing.T) {
	for _, sel := range []string{
		"all", "all-a, @ALL-b ,@node-c", "@pool-a/b/", "-1,1:2", "%x%,x%,%x,x", " web 1 ",
		"ABCDEF01-2345-6789-ABCD-EF0123456789", "007,007:08",
	} {
		s, err := Parse(sel)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Parse(s.String())
		if err != nil {
			t.Fatalf("Parse(%q) (from %q): %v", s.String(), sel, err)
		}
		if again.String() != s.String() {
			t.Errorf("%q → %q → %q", sel, s.String(), again.String())
		}
	}
}

func TestNeedsTags(t *testing.T) {
	for expr, want := range map[string]bool{
		"@all":            false,
		"web%,100:199":    false,
		"@tag-prod":       true,
		"@all,-@TAG-test": true,
		"@pool-p,@node-x": false,
		"tag-prod":        false, // a guest name, not a tag
		"%tag%":           false,
		"100, @tag-a":     true,
	} {
		s, err := Parse(expr)
		if err != nil {
			t.Fatalf("%q: %v", expr, err)
		}
		if got := s.NeedsTags(); got != want {
			t.Errorf("Parse(%q).NeedsTags() = %v, want %v", expr, got, want)
		}
	}
}
