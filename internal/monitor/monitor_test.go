package monitor

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var now = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func snap(cadence, age time.Duration) Item {
	return Item{Cadence: cadence, Newest: now.Add(-age), Name: "autoweb"}
}

func TestEvaluateGolden(t *testing.T) {
	h := time.Hour
	fresh := Guest{Policy: "web", Host: "qemu:///system", Name: "web1", Snapshot: snap(2*h, 30*time.Minute)}
	many := Input{Now: now}
	for i := range 8 {
		many.Guests = append(many.Guests, Guest{Policy: "web", Host: "h", Name: fmt.Sprintf("web%d", i), Snapshot: snap(h, time.Duration(4+i)*h)})
	}
	cases := []struct {
		name   string
		in     Input
		status Status
	}{
		{"ok", Input{Now: now, Guests: []Guest{
			fresh,
			{Policy: "db", Host: "pve1", Name: "db1", Snapshot: snap(h, 59*time.Minute), Backup: snap(24*h, 47*h)},
		}}, OK},
		{"warning-age", Input{Now: now, Guests: []Guest{fresh,
			{Policy: "web", Host: "qemu:///system", Name: "web2", Snapshot: snap(2*h, 5*h)}}}, Warning},
		// Exactly at the threshold is not past it.
		{"at-threshold", Input{Now: now, Guests: []Guest{
			{Policy: "web", Host: "h", Name: "web2", Snapshot: snap(2*h, 4*h)}}}, OK},
		{"critical-mixed", Input{Now: now, Thresholds: Thresholds{MaxChainDepth: 8}, Guests: []Guest{
			fresh,
			{Policy: "web", Host: "qemu:///system", Name: "web2", Snapshot: snap(2*h, 7*h)},
			{Policy: "web", Host: "qemu:///system", Name: "web3", Snapshot: Item{Cadence: 2 * h}},
			{Policy: "db", Host: "pve1", Name: "db1", Snapshot: snap(h, 10*time.Minute), Backup: snap(24*h, 80*h),
				Failed: "guest db1: freeze failed |\nagent timeout", FailedKind: "snapshot"},
			{Policy: "db", Host: "pve1", Name: "db2", Snapshot: snap(h, 10*time.Minute), ChainDepth: 9},
		}}, Critical},
		{"custom-thresholds", Input{Now: now, Thresholds: Thresholds{Warning: 1.5, Critical: 2}, Guests: []Guest{
			{Policy: "web", Host: "h", Name: "web2", Snapshot: snap(2*h, 3*h+time.Second)}}}, Warning},
		{"unknown-host", Input{Now: now, Guests: []Guest{fresh},
			Unknown: []string{"policy db: host pve1: connection refused"}}, Unknown},
		{"unknown-and-critical", Input{Now: now, Guests: []Guest{
			{Policy: "web", Host: "h", Name: "web2", Snapshot: snap(2*h, 7*h)}},
			Unknown: []string{"policy db: host pve1: connection refused"}}, Critical},
		{"unknown-beats-warning", Input{Now: now, Guests: []Guest{
			{Policy: "web", Host: "h", Name: "web2", Snapshot: snap(2*h, 5*h)}},
			Unknown: []string{"policy db: host pve1: connection refused"}}, Unknown},
		{"many-stale", many, Critical},
		{"empty", Input{Now: now}, OK},
		{"policy-selects-nothing", Input{Now: now, Guests: []Guest{fresh}, Empty: []string{"db"}}, Warning},
		{"policies-select-nothing", Input{Now: now, Empty: []string{"db", "web"}}, Warning},
		{"not-checked", Input{Now: now, Guests: []Guest{
			{Policy: "web", Host: "h", Name: "web9", Notes: []string{"snapshot not checked: only_running and the guest is shutoff"}}}}, OK},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := Evaluate(c.in)
			if r.Status != c.status {
				t.Errorf("status %s, want %s", r.Status, c.status)
			}
			got := fmt.Sprintf("exit %d\n%s", r.Status, r)
			path := filepath.Join("testdata", c.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("output differs from %s:\n--- got\n%s--- want\n%s", path, got, want)
			}
		})
	}
}

func TestHuman(t *testing.T) {
	for d, want := range map[time.Duration]string{
		45 * time.Second: "45s", 12*time.Minute + 30*time.Second: "12m", 7 * time.Hour: "7h",
		7*time.Hour + 30*time.Minute: "7h30m", 47 * time.Hour: "47h", 72 * time.Hour: "3d", 76 * time.Hour: "3d4h",
	} {
		if got := Human(d); got != want {
			t.Errorf("Human(%s) = %s, want %s", d, got, want)
		}
	}
}
