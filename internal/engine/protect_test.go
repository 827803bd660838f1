package engine

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/naming"
)

// TestEditedDescriptionIsKept: a snapshot whose description an admin edited is no
// longer autosnap's: snap and clean neither count nor remove it, and status does not
// list it. Before, cv4pve-autosnap's marker on the first line was enough.
func TestEditedDescriptionIsKept(t *testing.T) {
	h := newHarness(t, running("g"))
	f := mustFormat(t, naming.DefaultFormat)
	edited := map[string]string{}
	for i, desc := range []string{
		"cv4pve-autosnap\nkeep me",
		ours("crash") + "\nkeep me: before the upgrade",
		"autosnap\nnote: keep",
	} {
		at := t0.Add(time.Duration(i) * time.Hour)
		name := naming.Name("hourly", f, at)
		h.f.addSnap("g", name, desc, at)
		edited[name] = desc
	}
	plain := naming.Name("hourly", f, t0.Add(5*time.Hour))
	h.f.addSnap("g", plain, naming.LegacyMarker, t0.Add(5*time.Hour))

	rows, err := Status(context.Background(), h.f, h.f.guests, "", f, time.UTC, time.Second, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Name != plain {
		t.Errorf("status lists %v, want only %s", rows, plain)
	}
	if _, err := h.snap(h.job("hourly", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.clean(h.job("hourly", 0)); err != nil {
		t.Fatal(err)
	}
	got := h.f.names("g")
	for name := range edited {
		if !slices.Contains(got, name) {
			t.Errorf("snapshot %s with an edited description (%q) was removed", name, edited[name])
		}
	}
	if len(got) != len(edited) {
		t.Errorf("after snap --keep 1 and clean --keep 0: %v, want only the edited ones", got)
	}
}

// TestProtectedSnapshotsAreKept: a protected snapshot is never removed and takes no
// place among the kept ones; a dry run says why it is kept; status marks it.
func TestProtectedSnapshotsAreKept(t *testing.T) {
	h := newHarness(t, running("g"))
	f := mustFormat(t, naming.DefaultFormat)
	var names []string
	for i := range 4 {
		at := t0.Add(time.Duration(i) * time.Hour)
		desc := ours("crash")
		if i == 1 {
			var err error
			if desc, err = naming.WithProtected(desc, true); err != nil {
				t.Fatal(err)
			}
		}
		names = append(names, naming.Name("hourly", f, at))
		h.f.addSnap("g", names[i], desc, at)
	}
	// A driver may report the flag itself (and a description without it).
	h.f.mu.Lock()
	h.f.snaps["g"][2].Protected = true
	h.f.mu.Unlock()

	j := h.job("hourly", 2)
	j.DryRun = true
	rep, err := h.snap(j)
	if err != nil {
		t.Fatal(err)
	}
	out := h.out.String()
	for _, want := range []string{
		"Remove snapshot: " + names[0] + " (beyond keep 2)",
		"Keep snapshot: " + names[1] + " (" + protectedReason + ")",
		"Keep snapshot: " + names[2] + " (" + protectedReason + ")",
		"Keep snapshot: " + names[3] + " (newest 2 of 2)",
		"Keep snapshot: " + rep.SnapName + " (created now; newest 1 of 2)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run does not print %q", want)
		}
	}
	if i1, i2 := strings.Index(out, "Keep snapshot: "+names[1]), strings.Index(out, "Keep snapshot: "+names[3]); i1 > i2 {
		t.Errorf("kept snapshots are not in time order:\n%s", out)
	}

	real, err := h.snap(h.job("hourly", 2))
	if err != nil {
		t.Fatal(err)
	}
	if got := h.f.names("g"); !slices.Equal(got, []string{names[1], names[2], names[3], real.SnapName}) {
		t.Errorf("after snap --keep 2: %v", got)
	}
	if _, err := h.clean(h.job("hourly", 0)); err != nil {
		t.Fatal(err)
	}
	if got := h.f.names("g"); !slices.Equal(got, []string{names[1], names[2]}) {
		t.Errorf("after clean --keep 0: %v, want the protected %s, %s", got, names[1], names[2])
	}

	rows, err := Status(context.Background(), h.f, h.f.guests, "hourly", f, time.UTC, time.Second, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || !rows[0].Protected || !rows[1].Protected {
		t.Errorf("status rows %+v, want both protected", rows)
	}
}
