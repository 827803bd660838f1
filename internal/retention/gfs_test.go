package retention

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var gfsNow = time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)

// gfsHistory: every 8 h for 20 days before gfsNow, weekly for 10 weeks before that,
// monthly for 18 months before that.
func gfsHistory() []GFSItem {
	var out []GFSItem
	add := func(t time.Time) { out = append(out, GFSItem{ID: t.Format("20060102T150405Z"), Time: t}) }
	t := gfsNow.Add(-time.Hour)
	for i := 0; i < 60; i++ {
		add(t)
		t = t.Add(-8 * time.Hour)
	}
	for i := 0; i < 10; i++ {
		t = t.AddDate(0, 0, -7)
		add(t)
	}
	for i := 0; i < 18; i++ {
		t = t.AddDate(0, -1, 0)
		add(t)
	}
	slices.Reverse(out)
	return out
}

func render(ds []GFSDecision, loc *time.Location) string {
	var b strings.Builder
	for _, d := range ds {
		mark := "remove"
		if d.Keep {
			mark = "keep  "
		}
		fmt.Fprintf(&b, "%s %s %s  %s\n", d.ID, d.Time.In(loc).Format("Mon 2006-01-02 15:04 MST"), mark, strings.Join(d.Reasons, "; "))
	}
	return b.String()
}

// TestGFSGolden applies each keep option, and combinations, to one history and
// compares the decisions and reasons with testdata/gfs_*.golden (-update rewrites).
func TestGFSGolden(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	// Every 30 minutes across the spring-forward night (02:00 → 03:00 local).
	var dst []GFSItem
	for tm := time.Date(2026, 3, 28, 23, 0, 0, 0, berlin); tm.Before(time.Date(2026, 3, 29, 5, 0, 0, 0, berlin)); tm = tm.Add(30 * time.Minute) {
		dst = append(dst, GFSItem{ID: tm.UTC().Format("20060102T150405Z"), Time: tm.UTC()})
	}
	future := append(gfsHistory(), GFSItem{ID: "future", Time: gfsNow.Add(48 * time.Hour)})
	cases := []struct {
		name  string
		items []GFSItem
		p     GFS
		now   time.Time
	}{
		{"last5", gfsHistory(), GFS{Last: 5}, gfsNow},
		{"hourly6", gfsHistory(), GFS{Hourly: 6}, gfsNow},
		{"daily7", gfsHistory(), GFS{Daily: 7}, gfsNow},
		{"daily_unlimited", gfsHistory(), GFS{Daily: -1}, gfsNow},
		{"weekly4", gfsHistory(), GFS{Weekly: 4}, gfsNow},
		{"monthly6", gfsHistory(), GFS{Monthly: 6}, gfsNow},
		{"yearly3", gfsHistory(), GFS{Yearly: 3}, gfsNow},
		{"within3d", gfsHistory(), GFS{Within: Span{Days: 3}}, gfsNow},
		{"within1y2m", gfsHistory(), GFS{Within: Span{Years: 1, Months: 2}}, gfsNow},
		{"pbs_mix", gfsHistory(), GFS{Last: 3, Daily: 7, Weekly: 4, Monthly: 6, Yearly: 2}, gfsNow},
		{"all_rules", gfsHistory(), GFS{Last: 2, Hourly: 3, Daily: 3, Weekly: 3, Monthly: 3, Yearly: 3, Within: Span{Hours: 12}}, gfsNow},
		{"future_dated", future, GFS{Last: 2, Daily: 2}, gfsNow},
		{"dst_berlin_hourly", dst, GFS{Hourly: 5, Location: berlin}, time.Date(2026, 3, 29, 5, 0, 0, 0, berlin)},
		{"dst_berlin_daily", dst, GFS{Daily: 2, Location: berlin}, time.Date(2026, 3, 29, 5, 0, 0, 0, berlin)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.p.Location == nil {
				c.p.Location = time.UTC
			}
			in := slices.Clone(c.items)
			ds, err := c.p.Apply(c.items, c.now)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(in, c.items) {
				t.Error("Apply modified its input")
			}
			gfsInvariants(t, c.p, c.items, c.now, ds)
			got := []byte("policy: " + c.p.String() + "\n" + render(ds, c.p.Location))
			golden := filepath.Join("testdata", "gfs_"+c.name+".golden")
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
				t.Errorf("decisions differ from %s (run go test -update after checking):\n%s", golden, got)
			}
		})
	}
}

// gfsInvariants checks what every GFS result satisfies.
func gfsInvariants(t *testing.T, p GFS, items []GFSItem, now time.Time, ds []GFSDecision) {
	t.Helper()
	loc := p.Location
	if loc == nil {
		loc = time.Local
	}
	if len(ds) != len(items) {
		t.Fatalf("%d decisions for %d items", len(ds), len(items))
	}
	seen := map[string]bool{}
	for i, d := range ds {
		seen[d.ID] = true
		if len(d.Reasons) == 0 {
			t.Errorf("%s has no reason", d.ID)
		}
		if i > 0 && ds[i-1].Time.After(d.Time) {
			t.Errorf("decisions not oldest first at %s", d.ID)
		}
		if d.Time.After(now) && !d.Keep {
			t.Errorf("future-dated %s removed", d.ID)
		}
		if !p.Within.IsZero() && d.Time.After(p.Within.Before(now)) && !d.Keep {
			t.Errorf("%s is within %s but removed", d.ID, p.Within)
		}
	}
	for _, it := range items {
		if !seen[it.ID] {
			t.Errorf("no decision for %s", it.ID)
		}
	}
	// Per rule: at most its count, at most one point per period, and no point of a
	// period that holds a point kept by an earlier rule... unless it is that point.
	for _, r := range p.rules() {
		n := 0
		periods := map[string]string{}
		for _, d := range ds {
			if !d.Keep || !strings.HasPrefix(d.Reasons[0], r.name+" #") {
				continue
			}
			n++
			if r.key != nil {
				k := r.key(d.Time.In(loc))
				if other, dup := periods[k]; dup {
					t.Errorf("rule %s kept %s and %s of period %s", r.name, other, d.ID, k)
				}
				periods[k] = d.ID
			}
		}
		if r.n >= 0 && n > r.n {
			t.Errorf("rule %s kept %d > %d", r.name, n, r.n)
		}
	}
	// The newest point not in the future is kept by any policy with a count rule.
	if p.Last != 0 || p.Hourly != 0 || p.Daily != 0 || p.Weekly != 0 || p.Monthly != 0 || p.Yearly != 0 {
		for i := len(ds) - 1; i >= 0; i-- {
			if !ds[i].Time.After(now) {
				if !ds[i].Keep {
					t.Errorf("newest point %s removed", ds[i].ID)
				}
				break
			}
		}
	}
}

// TestGFSProperties applies random policies to random histories: the invariants hold,
// the result does not depend on the input order, and an unlimited rule alone keeps
// exactly the newest point of every period.
func TestGFSProperties(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for iter := 0; iter < 400; iter++ {
		var items []GFSItem
		n := rng.Intn(60)
		for i := 0; i < n; i++ {
			tm := gfsNow.Add(-time.Duration(rng.Int63n(int64(800 * 24 * time.Hour))))
			if rng.Intn(30) == 0 {
				tm = gfsNow.Add(time.Duration(rng.Intn(100)) * time.Hour)
			}
			items = append(items, GFSItem{ID: fmt.Sprintf("p%03d", i), Time: tm.Truncate(time.Minute)})
		}
		c := func() int { return []int{0, 0, 1, 2, 3, 5, -1}[rng.Intn(7)] }
		p := GFS{Last: c(), Hourly: c(), Daily: c(), Weekly: c(), Monthly: c(), Yearly: c(), Location: time.UTC}
		if rng.Intn(3) == 0 {
			p.Within = Span{Days: rng.Intn(40), Hours: rng.Intn(30)}
		}
		ds, err := p.Apply(items, gfsNow)
		if err != nil {
			if !errors.Is(err, ErrKeepsNothing) {
				t.Fatalf("%s: %v", p, err)
			}
			continue
		}
		gfsInvariants(t, p, items, gfsNow, ds)
		shuffled := slices.Clone(items)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		ds2, err := p.Apply(shuffled, gfsNow)
		if err != nil {
			t.Fatal(err)
		}
		if render(ds, time.UTC) != render(ds2, time.UTC) {
			t.Fatalf("%s: order of input changes the result", p)
		}
		// Unlimited daily alone: the newest point of each day, nothing else.
		ud, err := GFS{Daily: -1, Location: time.UTC}.Apply(items, gfsNow)
		if err != nil {
			if len(items) == 0 {
				continue
			}
			t.Fatal(err)
		}
		newest := map[string]GFSItem{}
		for _, it := range items {
			if it.Time.After(gfsNow) {
				continue
			}
			k := it.Time.Format("2006-01-02")
			if cur, ok := newest[k]; !ok || it.Time.After(cur.Time) || it.Time.Equal(cur.Time) && it.ID > cur.ID {
				newest[k] = it
			}
		}
		for _, d := range ud {
			want := d.Time.After(gfsNow) || newest[d.Time.Format("2006-01-02")].ID == d.ID
			if d.Keep != want {
				t.Fatalf("daily unlimited: %s keep=%v want %v", d.ID, d.Keep, want)
			}
		}
	}
}

func TestGFSRefuses(t *testing.T) {
	items := gfsHistory()
	if _, err := (GFS{}).Apply(items, gfsNow); !errors.Is(err, ErrKeepsNothing) {
		t.Errorf("empty policy: %v", err)
	}
	if _, err := (GFS{Within: Span{Hours: 1}}).Apply(items, gfsNow.AddDate(1, 0, 0)); !errors.Is(err, ErrKeepsNothing) {
		t.Errorf("policy keeping nothing: %v", err)
	}
	if _, err := (GFS{Daily: -2}).Apply(items, gfsNow); err == nil {
		t.Error("count -2 accepted")
	}
	if ds, err := (GFS{Last: 1}).Apply(nil, gfsNow); err != nil || len(ds) != 0 {
		t.Errorf("no items: %v %v", ds, err)
	}
}

func TestParseSpan(t *testing.T) {
	for in, want := range map[string]Span{
		"7d": {Days: 7}, "1y6m": {Years: 1, Months: 6}, "2w3d12h": {Days: 17, Hours: 12}, "36h": {Hours: 36},
	} {
		got, err := ParseSpan(in)
		if err != nil || got != want {
			t.Errorf("ParseSpan(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "7", "d", "3x", "1.5d", "-2d"} {
		if _, err := ParseSpan(bad); err == nil {
			t.Errorf("ParseSpan(%q) accepted", bad)
		}
	}
}
