package retention

import (
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"
)

// TestPlanGFSProperties: over random histories (with duplicates in a period, future
// dates and incomplete items) and random policies, PlanGFS keeps the planned
// snapshot, keeps at most the rules' sum plus within and future-dated ones, removes
// every incomplete item, returns the items oldest first, and re-applied to what it
// keeps removes nothing.
func TestPlanGFSProperties(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, berlin)
	count := func() int { return []int{0, 0, 1, 2, 3, 5, -1}[rng.Intn(7)] }
	for c := 0; c < 3000; c++ {
		p := GFS{Last: count(), Hourly: count(), Daily: count(), Weekly: count(), Monthly: count(), Yearly: count(), Location: berlin}
		if rng.Intn(3) == 0 {
			p.Within = Span{Days: rng.Intn(3), Hours: rng.Intn(30)}
		}
		var items []Item
		for i := rng.Intn(40); i > 0; i-- {
			tm := now.Add(-time.Duration(rng.Int63n(int64(400 * 24 * time.Hour))))
			if rng.Intn(30) == 0 {
				tm = now.Add(time.Duration(rng.Intn(3*3600)) * time.Second)
			}
			it := Item{Name: fmt.Sprintf("auto%03d-%s", i, tm.Format("060102150405")), Time: tm}
			if rng.Intn(25) == 0 {
				it.Incomplete = "merge interrupted"
			}
			items = append(items, it)
		}
		var planned *Item
		if rng.Intn(2) == 0 {
			planned = &Item{Name: "autonew", Time: now}
		}
		ds, err := PlanGFS(items, planned, p, now)
		if p.IsEmpty() {
			if !errors.Is(err, ErrKeepsNothing) {
				t.Fatalf("case %d: empty policy: %v", c, err)
			}
			continue
		}
		if errors.Is(err, ErrKeepsNothing) && planned == nil {
			continue // only within, nothing recent: refused, as documented
		}
		if err != nil {
			t.Fatalf("case %d %s: %v", c, p, err)
		}
		if len(ds) != len(items)+map[bool]int{true: 1}[planned != nil] {
			t.Fatalf("case %d: %d decisions for %d items", c, len(ds), len(items))
		}
		if !slices.IsSortedFunc(ds, func(a, b Decision) int { return a.Time.Compare(b.Time) }) {
			t.Fatalf("case %d: decisions not oldest first", c)
		}
		kept, extra, unlimited := 0, 0, false
		var survivors []Item
		for _, d := range ds {
			if d.Incomplete != "" && d.Keep {
				t.Fatalf("case %d: incomplete %s kept", c, d.Name)
			}
			if d.New && (!d.Keep || d.Reasons[0] != "created now") {
				t.Fatalf("case %d: planned %+v", c, d)
			}
			if d.Keep {
				kept++
				survivors = append(survivors, d.Item)
				if r := primaryRule(d.Reasons); r == "within" || r == "dated" {
					extra++
				}
			}
		}
		sum := 0
		for _, n := range []int{p.Last, p.Hourly, p.Daily, p.Weekly, p.Monthly, p.Yearly} {
			unlimited = unlimited || n == -1
			sum += n
		}
		if !unlimited && kept > sum+extra {
			t.Fatalf("case %d %s: kept %d > %d + %d", c, p, kept, sum, extra)
		}
		again, err := PlanGFS(survivors, nil, p, now)
		if err != nil {
			t.Fatalf("case %d: re-applying: %v", c, err)
		}
		for _, d := range again {
			if !d.Keep {
				t.Fatalf("case %d %s: re-applying removes %s", c, p, d.Name)
			}
		}
	}
}

// TestPlanGFSErrors: a taken planned name and an invalid policy are refused.
func TestPlanGFSErrors(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	items := []Item{{Name: "autox1", Time: now.Add(-time.Hour)}}
	if _, err := PlanGFS(items, &Item{Name: "autox1", Time: now}, GFS{Last: 1}, now); !errors.Is(err, ErrExists) {
		t.Errorf("taken name: %v", err)
	}
	if _, err := PlanGFS(items, nil, GFS{Daily: -2}, now); err == nil {
		t.Errorf("--keep-daily -2 accepted")
	}
	if _, err := PlanGFS(nil, nil, GFS{}, now); !errors.Is(err, ErrKeepsNothing) {
		t.Errorf("empty policy: %v", err)
	}
}
