package naming

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// oursCases are descriptions as autosnap, cv4pve-autosnap and eve4pve-autosnap write
// them, as Proxmox VE and editors return them, and as admins edit them.
var oursCases = []string{
	// Written by autosnap (engine.createOptions, snapshot create, protect).
	Marker,
	Description(map[string]string{FieldConsistency: "crash"}),
	Description(mergeFields(map[string]string{FieldConsistency: "quiesced"}, NameFields("hourly", formatOf(DefaultFormat)))),
	Description(mergeFields(map[string]string{FieldConsistency: "offline"}, NameFields("daily", formatOf("yyyyMMdd-HHmm")))),
	"autosnap\nlabel: hourly\nconsistency: crash", // snapshot create appends consistency last
	"autosnap\nconsistency: memory\nprotected: yes",
	"cv4pve-autosnap\nprotected: yes",
	// Written by cv4pve-autosnap and eve4pve-autosnap.
	LegacyMarker,
	EveMarker,
	// As stored and returned: trailing newline, CRLF, surrounding blanks.
	"cv4pve-autosnap\n",
	"\ncv4pve-autosnap",
	" autosnap \r\n",
	"autosnap\r\nconsistency: crash\r\n",
	"autosnap\n\nconsistency: crash\n",
	// Edited by an admin: no longer ours.
	"cv4pve-autosnap\nkeep me",
	"cv4pve-autosnap keep me",
	"keep me\ncv4pve-autosnap",
	"cv4pve-\nautosnap",
	"autosnap\nconsistency: crash\nkeep me",
	"autosnap\nnote: keep",
	"autosnap\nlabel: hourly keep",
	"autosnap\nprotected: no",
	"autosnap\nprotected: yes please",
	"autosnap\ntimestamp-format: yyMMdd'",
	"autosnap\n: crash",
	"eve4pve-autosnap\nkeep",
	// Someone else's.
	"",
	"before upgrade",
	"Autosnap",
	"autosnapshot",
	"made by autosnap",
	"autosnap: consistency",
	"consistency: crash",
}

// formatOf is ParseFormat for the fixed formats of package-level test cases.
func formatOf(s string) Format {
	f, err := ParseFormat(s)
	if err != nil {
		panic(err)
	}
	return f
}

// TestOursGolden pins, for every case, whether the description is ours, whether it is
// protected, and what protect and unprotect write, against testdata/ours.golden.
func TestOursGolden(t *testing.T) {
	var b strings.Builder
	for _, d := range oursCases {
		fmt.Fprintf(&b, "%s\n  ours=%v protected=%v\n", strconv.Quote(d), IsOurs(d), IsProtected(d))
		on, err := WithProtected(d, true)
		if err != nil {
			fmt.Fprintf(&b, "  protect: error\n")
			if IsOurs(d) {
				t.Errorf("WithProtected(%q) fails on our description: %v", d, err)
			}
			continue
		}
		off, _ := WithProtected(d, false)
		fmt.Fprintf(&b, "  protect: %s\n  unprotect: %s\n", strconv.Quote(on), strconv.Quote(off))
	}
	golden := filepath.Join("testdata", "ours.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if b.String() != string(want) {
		t.Errorf("differs from %s (run with -update and review the diff):\n%s", golden, b.String())
	}
}

// TestProtectProperties: protecting keeps a description ours, sets the flag, keeps every
// other field and the header; unprotecting clears it; both are idempotent; and an
// unprotected cv4pve-autosnap snapshot gets back exactly cv4pve-autosnap's marker.
func TestProtectProperties(t *testing.T) {
	for _, d := range oursCases {
		if !IsOurs(d) {
			if _, err := WithProtected(d, true); err == nil {
				t.Errorf("WithProtected(%q) accepted a description that is not ours", d)
			}
			continue
		}
		on, _ := WithProtected(d, true)
		off, _ := WithProtected(on, false)
		if !IsOurs(on) || !IsProtected(on) || !IsOurs(off) || IsProtected(off) {
			t.Errorf("%q: protect %q (ours %v, protected %v), unprotect %q (ours %v, protected %v)", d, on, IsOurs(on), IsProtected(on), off, IsOurs(off), IsProtected(off))
		}
		if again, _ := WithProtected(on, true); again != on {
			t.Errorf("protect twice: %q then %q", on, again)
		}
		want := DescriptionFields(d)
		delete(want, FieldProtected)
		got := DescriptionFields(off)
		if strings.TrimSpace(strings.SplitN(d, "\n", 2)[0]) != "" && !maps.Equal(got, want) {
			t.Errorf("%q: unprotected fields %v, want %v", d, got, want)
		}
	}
	if off, _ := WithProtected(LegacyMarker+"\n"+FieldProtected+": "+ProtectedValue, false); off != LegacyMarker {
		t.Errorf("unprotected cv4pve-autosnap snapshot: %q, want exactly %q", off, LegacyMarker)
	}
}
