package retention

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var t0 = time.Date(2026, 9, 29, 2, 0, 0, 0, time.UTC)

func at(h int) time.Time { return t0.Add(time.Duration(h) * time.Hour) }

func items(hours ...int) []Item {
	var out []Item
	for _, h := range hours {
		out = append(out, Item{Name: "autohourly" + at(h).Format("060102150405"), Time: at(h)})
	}
	return out
}

func newItem(h int) *Item {
	it := items(h)[0]
	return &it
}

func TestPlanGolden(t *testing.T) {
	tied := []Item{{Name: "autob", Time: t0}, {Name: "autoa", Time: t0}, {Name: "autoc", Time: t0}}
	cases := []struct {
		name     string
		existing []Item
		planned  *Item
		keep     int
	}{
		{"empty_keep1_planned", nil, newItem(10), 1},
		{"empty_keep0", nil, nil, 0},
		{"keep0_clean", items(1, 2, 3), nil, 0},
		{"keep1_clean", items(1, 2, 3), nil, 1},
		{"keep1_planned", items(1, 2, 3), newItem(10), 1},
		{"keep2_planned", items(1, 2, 3), newItem(10), 2},
		{"keep2_clean", items(1, 2, 3), nil, 2},
		{"keep5_planned_fewer", items(1, 2, 3), newItem(10), 5},
		{"keep5_clean_more", items(1, 2, 3, 4, 5, 6, 7, 8), nil, 5},
		{"keep5_planned_more", items(1, 2, 3, 4, 5, 6, 7, 8), newItem(10), 5},
		{"keep3_planned_exact", items(1, 2), newItem(10), 3},
		{"unsorted", items(5, 1, 7, 3, 2), nil, 2},
		{"unsorted_planned", items(5, 1, 7, 3, 2), newItem(10), 3},
		{"ties_by_name", tied, nil, 2},
		{"ties_with_planned_same_time", tied, &Item{Name: "autoz", Time: t0}, 2},
		{"ties_planned_sorts_first", tied, &Item{Name: "auto0", Time: t0}, 2},
		{"future_dated_keep1_planned", items(1, 20, 2), newItem(10), 1},
		{"future_dated_keep2_planned", items(1, 20, 2), newItem(10), 2},
		{"future_dated_keep3_planned", items(1, 20, 30, 2), newItem(10), 3},
		{"future_dated_clean", items(1, 20, 2), nil, 2},
		{"zero_time", []Item{{Name: "autox"}, items(1)[0]}, nil, 1},
		{"incomplete_planned", withIncomplete(items(1, 2, 3), 2), newItem(10), 2},
		{"incomplete_newest_clean", withIncomplete(items(1, 2, 3), 2), nil, 2},
		{"incomplete_all_keep0", withIncomplete(items(1, 2), 0, 1), nil, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := slices.Clone(c.existing)
			ds, err := Plan(c.existing, c.planned, c.keep)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(in, c.existing) {
				t.Error("Plan modified its input")
			}
			checkInvariants(t, ds, c.existing, c.planned, c.keep)
			got, err := json.MarshalIndent(struct {
				Existing  []Item     `json:"existing"`
				Planned   *Item      `json:"planned"`
				Keep      int        `json:"keep"`
				Decisions []Decision `json:"decisions"`
				Removals  []Item     `json:"removals"`
			}{c.existing, c.planned, c.keep, ds, Removals(ds)}, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := filepath.Join("testdata", "plan_"+c.name+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("plan differs from %s (run go test -update after checking):\n got: %s\nwant: %s", golden, got, want)
			}
		})
	}
}

// checkInvariants verifies what every plan must satisfy, independent of goldens.
func checkInvariants(t *testing.T, ds []Decision, existing []Item, planned *Item, keep int) {
	t.Helper()
	total := len(existing)
	if planned != nil {
		total++
	}
	if len(ds) != total {
		t.Fatalf("%d decisions for %d items", len(ds), total)
	}
	kept := 0
	for i, d := range ds {
		if d.Keep {
			kept++
		}
		if d.Reason == "" {
			t.Errorf("decision %d has no reason", i)
		}
		if d.New != (planned != nil && d.Item == *planned) {
			t.Errorf("decision %d: New = %v", i, d.New)
		}
		if d.New && !d.Keep {
			t.Errorf("planned snapshot removed")
		}
		if i > 0 {
			p := ds[i-1]
			if p.Time.After(d.Time) || p.Time.Equal(d.Time) && p.Name > d.Name {
				t.Errorf("decisions not sorted oldest first at %d", i)
			}
		}
	}
	whole := total
	for _, it := range existing {
		if it.Incomplete != "" {
			whole--
		}
	}
	for _, d := range ds {
		if d.Incomplete != "" && d.Keep {
			t.Errorf("incomplete %s kept", d.Name)
		}
		if d.Keep && !strings.HasPrefix(d.Reason, "newest ") && !strings.HasPrefix(d.Reason, "created now; newest ") {
			t.Errorf("kept %s with reason %q", d.Name, d.Reason)
		}
	}
	if want := min(keep, whole); kept != want {
		t.Errorf("kept %d, want %d", kept, want)
	}
}

// withIncomplete marks the items at the given indexes as incomplete.
func withIncomplete(its []Item, idx ...int) []Item {
	for _, i := range idx {
		its[i].Incomplete = "a merge removing it was interrupted"
	}
	return its
}

func TestKept(t *testing.T) {
	ds, err := Plan(items(1, 2, 3), newItem(10), 2)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range Kept(ds) {
		got = append(got, d.Name+": "+d.Reason)
	}
	want := []string{"autohourly260929050000: newest 2 of 2", "autohourly260929120000: created now; newest 1 of 2"}
	if !slices.Equal(got, want) {
		t.Errorf("Kept = %q, want %q", got, want)
	}
}

func TestPlanErrors(t *testing.T) {
	cases := []struct {
		name     string
		existing []Item
		planned  *Item
		keep     int
		want     string
	}{
		{"negative", items(1), nil, -1, "keep -1 is negative"},
		{"keep0_snap", items(1), newItem(10), 0, "refusing --keep 0 with snap: "},
		{"name_taken", items(1, 10), newItem(10), 2, "snapshot already exists: autohourly"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ds, err := Plan(c.existing, c.planned, c.keep)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Plan() = %v, %v; want error containing %q", ds, err, c.want)
			}
			if ds != nil {
				t.Errorf("decisions returned with error: %v", ds)
			}
		})
	}
	if _, err := Plan(items(10), newItem(10), 1); !errors.Is(err, ErrExists) {
		t.Errorf("Plan with taken name: %v, want ErrExists", err)
	}
}

func TestRemovals(t *testing.T) {
	ds := []Decision{
		{Item: Item{Name: "a"}, Keep: false},
		{Item: Item{Name: "b"}, Keep: true},
		{Item: Item{Name: "c"}, Keep: false},
	}
	got := Removals(ds)
	if want := []Item{{Name: "a"}, {Name: "c"}}; !slices.Equal(got, want) {
		t.Errorf("Removals = %v, want %v", got, want)
	}
	if Removals(nil) != nil {
		t.Error("Removals(nil) != nil")
	}
}
