package selector

import "testing"

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"all", "@all", "all-pve1", "@all-pve1", "@node-pve1", "@pool-prod/web", "@tag-db",
		"100", "100:199", "-200:299", "0c6e1d7a-1b2c-4d5e-8f90-a1b2c3d4e5f6", "%web%", "web%", "%web",
		"web1", "@all,-100,-@tag-x", "", ",", "-", "--1", "@x", "%", "a%b", "1:", "200:100",
		"@pool- a/ /", "all- x", "Kelvin-\u212a", "\xff", "@pool-\xffa",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := Parse(in)
		if err != nil {
			return
		}
		norm := s.String()
		again, err := Parse(norm)
		if err != nil {
			t.Fatalf("Parse(%q) ok, but Parse(String() = %q): %v", in, norm, err)
		}
		if again.String() != norm {
			t.Fatalf("Parse(%q).String() = %q, re-parsed: %q", in, norm, again.String())
		}
		_, _ = s.Select(guests)
	})
}
