package web

import (
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/history"
)

// Freshness classes of a newest snapshot or backup against the policy's cadence.
const (
	FreshOK   = "ok"   // within one cadence
	FreshLate = "late" // past one cadence, not yet Warning × cadence
	FreshWarn = "warn" // past Warning × cadence (monitor: WARNING)
	FreshCrit = "crit" // past Critical × cadence, or none at all (monitor: CRITICAL)
	FreshNone = "none" // the policy has no such rule
)

// Freshness classifies the age of the newest item (zero newest: none exists) against
// cadence (0: no rule) with monitor's factors.
func Freshness(now, newest time.Time, cadence time.Duration, warn, crit float64) string {
	switch {
	case cadence <= 0:
		return FreshNone
	case newest.IsZero():
		return FreshCrit
	}
	age := now.Sub(newest)
	switch {
	case age > time.Duration(crit*float64(cadence)):
		return FreshCrit
	case age > time.Duration(warn*float64(cadence)):
		return FreshWarn
	case age > cadence:
		return FreshLate
	}
	return FreshOK
}

// worse orders classes by severity.
func severity(c string) int {
	switch c {
	case FreshLate:
		return 1
	case FreshWarn:
		return 2
	case FreshCrit:
		return 3
	}
	return 0
}

// guestView is a Guest with what the dashboard derives from it.
type guestView struct {
	Guest
	SnapshotAge    *float64 `json:"snapshot_age_seconds"`
	BackupAge      *float64 `json:"backup_age_seconds"`
	SnapshotEvery  float64  `json:"snapshot_cadence_seconds"`
	BackupEvery    float64  `json:"backup_cadence_seconds"`
	SnapshotStatus string   `json:"snapshot_status"`
	BackupStatus   string   `json:"backup_status"`
	// Status is the worse of both, "unprotected" when no policy rule covers the
	// guest, and "failed" when its last run failed.
	Status string `json:"status"`
	Failed bool   `json:"failed"`
}

func (s *server) view(g Guest) guestView {
	now := s.o.Now()
	v := guestView{Guest: g,
		SnapshotEvery:  g.SnapshotCadence.Seconds(),
		BackupEvery:    g.BackupCadence.Seconds(),
		SnapshotStatus: Freshness(now, g.NewestSnapshot, g.SnapshotCadence, s.o.Warning, s.o.Critical),
		BackupStatus:   Freshness(now, g.NewestBackup, g.BackupCadence, s.o.Warning, s.o.Critical),
	}
	if !g.NewestSnapshot.IsZero() {
		a := now.Sub(g.NewestSnapshot).Seconds()
		v.SnapshotAge = &a
	}
	if !g.NewestBackup.IsZero() {
		a := now.Sub(g.NewestBackup).Seconds()
		v.BackupAge = &a
	}
	v.Status = v.SnapshotStatus
	if severity(v.BackupStatus) > severity(v.Status) {
		v.Status = v.BackupStatus
	}
	if v.SnapshotStatus == FreshNone && v.BackupStatus == FreshNone {
		v.Status = "unprotected"
	}
	if g.LastRun != nil && g.LastRun.Outcome == history.Failed {
		v.Failed = true
		v.Status = "failed"
	}
	return v
}

// guestFilter is the overview's query: host, policy, tag, state (run state) and
// status (ok, late, warn, crit, failed, unprotected). Empty fields do not filter.
type guestFilter struct {
	Host, Policy, Tag, State, Status string
}

func parseFilter(q url.Values) guestFilter {
	return guestFilter{Host: q.Get("host"), Policy: q.Get("policy"), Tag: q.Get("tag"), State: q.Get("state"), Status: q.Get("status")}
}

func (f guestFilter) match(v guestView) bool {
	return (f.Host == "" || v.Host == f.Host || v.Node == f.Host) &&
		(f.Policy == "" || v.Policy == f.Policy) &&
		(f.Tag == "" || slices.Contains(v.Tags, f.Tag)) &&
		(f.State == "" || string(v.State) == f.State) &&
		(f.Status == "" || v.Status == f.Status)
}

// facets are the values the filter menus offer.
type facets struct {
	Hosts, Policies, Tags, States []string
}

func facetsOf(gs []Guest) facets {
	set := func() map[string]bool { return map[string]bool{} }
	h, p, t, st := set(), set(), set(), set()
	for _, g := range gs {
		h[g.Host] = true
		if g.Policy != "" {
			p[g.Policy] = true
		}
		for _, x := range g.Tags {
			t[x] = true
		}
		st[string(g.State)] = true
	}
	keys := func(m map[string]bool) []string {
		out := make([]string, 0, len(m))
		for k := range m {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	return facets{keys(h), keys(p), keys(t), keys(st)}
}

// treeRow is one snapshot in tree order with its depth.
type treeRow struct {
	Snapshot
	Depth    int
	Children int
}

// snapshotTree orders snaps depth first (children oldest first) as `snapshot list
// --tree` does; a snapshot whose parent is unknown is a root.
func snapshotTree(snaps []Snapshot) []treeRow {
	byName := map[string]bool{}
	for _, s := range snaps {
		byName[s.Name] = true
	}
	kids := map[string][]Snapshot{}
	for _, s := range snaps {
		p := s.Parent
		if !byName[p] {
			p = ""
		}
		kids[p] = append(kids[p], s)
	}
	for _, k := range kids {
		sort.SliceStable(k, func(i, j int) bool { return k[i].Created.Before(k[j].Created) })
	}
	var out []treeRow
	seen := map[string]bool{}
	var walk func(parent string, depth int)
	walk = func(parent string, depth int) {
		for _, s := range kids[parent] {
			if seen[s.Name] {
				continue
			}
			seen[s.Name] = true
			out = append(out, treeRow{Snapshot: s, Depth: depth, Children: len(kids[s.Name])})
			walk(s.Name, depth+1)
		}
	}
	walk("", 0)
	return out
}

// chainGroup is one backup chain's points, oldest first.
type chainGroup struct {
	Chain  string
	Points []BackupPoint
	Size   uint64
}

func backupChains(ps []BackupPoint) []chainGroup {
	var out []chainGroup
	idx := map[string]int{}
	sorted := slices.Clone(ps)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Started.Before(sorted[j].Started) })
	for _, p := range sorted {
		i, ok := idx[p.Chain]
		if !ok {
			i = len(out)
			idx[p.Chain] = i
			out = append(out, chainGroup{Chain: p.Chain})
		}
		out[i].Points = append(out[i].Points, p)
		out[i].Size += p.Size
	}
	return out
}

// humanAge prints a duration the way an admin reads it: 45s, 12m, 5h, 3d.
func humanAge(d time.Duration) string {
	switch {
	case d < 0:
		return "in the future"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// humanBytes prints sizes in binary units.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// jobView is a history.Job as `autosnap history -o json` prints it (the same keys),
// plus duration_seconds.
type jobView struct {
	ID       int64           `json:"id"`
	Policy   string          `json:"policy"`
	Kind     history.Kind    `json:"kind"`
	Trigger  string          `json:"trigger"`
	DryRun   bool            `json:"dry_run"`
	Started  time.Time       `json:"started"`
	Ended    time.Time       `json:"ended"`
	Duration float64         `json:"duration_seconds"`
	Outcome  history.Outcome `json:"outcome"`
	Error    string          `json:"error"`
	Guests   []guestRunView  `json:"guests"`
}

type guestRunView struct {
	Host     string          `json:"host"`
	Guest    string          `json:"guest"`
	Started  time.Time       `json:"started"`
	Ended    time.Time       `json:"ended"`
	Outcome  history.Outcome `json:"outcome"`
	Error    string          `json:"error"`
	Created  []string        `json:"created"`
	Removed  []string        `json:"removed"`
	Bytes    int64           `json:"bytes"`
	FreezeNS int64           `json:"freeze_ns"`
}

func (s *server) jobView(j history.Job) jobView {
	v := jobView{ID: j.ID, Policy: j.Policy, Kind: j.Kind, Trigger: j.Trigger, DryRun: j.DryRun,
		Started: j.Started, Ended: j.Ended, Outcome: j.Outcome, Error: j.Error, Guests: []guestRunView{}}
	end := j.Ended
	if end.IsZero() {
		end = s.o.Now()
	}
	v.Duration = end.Sub(j.Started).Seconds()
	for _, g := range j.Guests {
		v.Guests = append(v.Guests, guestRunView{Host: g.Host, Guest: g.Guest, Started: g.Started, Ended: g.Ended,
			Outcome: g.Outcome, Error: g.Error, Created: nonNil(g.Created), Removed: nonNil(g.Removed),
			Bytes: g.Bytes, FreezeNS: int64(g.Freeze)})
	}
	return v
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func joinComma(s []string) string { return strings.Join(s, ", ") }
