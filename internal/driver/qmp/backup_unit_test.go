package qmp

import (
	"strings"
	"testing"
	"time"
)

// TestCheckpointUsability: a checkpoint is usable only when every disk it tracks is
// attached and holds its bitmap recording and consistent; each reason is named.
func TestCheckpointUsability(t *testing.T) {
	ok := qbitmap{Name: "autosnap-a", Recording: true, Persistent: true}
	cases := []struct {
		name  string
		disks []bkDisk
		want  string // "" = usable, else a word the reason must contain
	}{
		{"recording", []bkDisk{{Name: "vda", Bitmaps: []qbitmap{ok}}, {Name: "vdb", Bitmaps: []qbitmap{ok}}}, ""},
		{"inconsistent", []bkDisk{{Name: "vda", Bitmaps: []qbitmap{ok}}, {Name: "vdb", Bitmaps: []qbitmap{{Name: "autosnap-a", Recording: true, Inconsistent: true}}}}, "disk vdb: bitmap autosnap-a is inconsistent"},
		{"disabled", []bkDisk{{Name: "vda", Bitmaps: []qbitmap{{Name: "autosnap-a"}}}, {Name: "vdb", Bitmaps: []qbitmap{ok}}}, "disk vda: bitmap autosnap-a is not recording"},
		{"missing", []bkDisk{{Name: "vda", Bitmaps: []qbitmap{{Name: "autosnap-b", Recording: true}}}, {Name: "vdb", Bitmaps: []qbitmap{ok}}}, "disk vda: bitmap autosnap-a is missing"},
		{"detached", []bkDisk{{Name: "vda", Bitmaps: []qbitmap{ok}}}, "disk vdb is no longer attached"},
	}
	created := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	f := &bkFile{Checkpoints: []bkCheckpoint{{Name: "autosnap-a", Created: created, Disks: []string{"vda", "vdb"}}}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cps := checkpoints(f, c.disks)
			if len(cps) != 1 || cps[0].Name != "autosnap-a" || !cps[0].Created.Equal(created) {
				t.Fatalf("checkpoints: %+v", cps)
			}
			got := cps[0].Unusable
			if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
				t.Errorf("unusable %q, want %q", got, c.want)
			}
		})
	}
}

// TestBitmapFlags: QEMU's bitmap state is shown in qemu-img's words.
func TestBitmapFlags(t *testing.T) {
	got := strings.Join(qbitmap{Recording: true, Inconsistent: true, Busy: true}.flags(), ",")
	if got != "auto,in-use,busy,transient" {
		t.Errorf("flags %q", got)
	}
	if got := strings.Join(qbitmap{Recording: true, Persistent: true}.flags(), ","); got != "auto" {
		t.Errorf("flags of a recording persistent bitmap: %q", got)
	}
}
