package cli

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/driver/libvirt"
	"github.com/autosnap/autosnap/internal/testbed"
)

type bitmapRow struct {
	Kind, Name, Disk, Image, Flags, Usable, Orphan string
}

func listBitmaps(t *testing.T, vm string) []bitmapRow {
	t.Helper()
	r := mustRun(t, "--host", testbed.URI, "-o", "json", "bitmaps", "list", vm)
	var rows []bitmapRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("bitmaps list -o json: %v\n%s", err, r.stdout)
	}
	return rows
}

func imageBitmapNames(t *testing.T, file string) []string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", file).Output()
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Spec struct {
			Data struct {
				Bitmaps []struct{ Name string } `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range info.Spec.Data.Bitmaps {
		names = append(names, b.Name)
	}
	slices.Sort(names)
	return names
}

// TestBitmapsListCleanup: list shows autosnap's checkpoint (usable) and its bitmaps,
// and an orphan bitmap; a dry run changes nothing; cleanup removes autosnap's
// checkpoint and bitmaps, the orphan included, and leaves another tool's checkpoint
// and bitmap alone.
func TestBitmapsListCleanup(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{Disks: 2, State: testbed.Running})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d, err := libvirt.Open(ctx, driver.Config{Host: testbed.URI})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	g := driver.Guest{Name: dom.Name, UUID: dom.UUID, State: driver.StateRunning}
	dir := t.TempDir()
	req := driver.BackupRequest{Level: driver.LevelFull, Checkpoint: "autosnap-t1"}
	for _, disk := range []string{"vda", "vdb"} {
		req.Targets = append(req.Targets, driver.BackupTarget{Disk: disk, File: filepath.Join(dir, disk+".qcow2")})
	}
	if _, err := d.Backup(ctx, g, req); err != nil {
		t.Fatal(err)
	}
	if _, err := bed.Conn.DomainCheckpointCreateXML(dom.Dom, `<domaincheckpoint><name>theirs</name></domaincheckpoint>`, 0); err != nil {
		t.Fatal(err)
	}
	rows := listBitmaps(t, dom.Name)
	var cp *bitmapRow
	for i, r := range rows {
		if r.Name == "theirs" {
			t.Errorf("list shows another tool's checkpoint or bitmap: %+v", r)
		}
		if r.Kind == "checkpoint" && r.Name == "autosnap-t1" {
			cp = &rows[i]
		}
	}
	if cp == nil || cp.Usable != "yes" || cp.Disk != "vda,vdb" {
		t.Fatalf("list: checkpoint autosnap-t1 missing or wrong: %+v", rows)
	}

	if err := bed.Conn.DomainDestroyFlags(dom.Dom, golibvirt.DomainDestroyGraceful); err != nil {
		t.Fatal(err)
	}
	vda := dom.Chain(t, "vda")[0]
	if out, err := exec.Command("qemu-img", "bitmap", "--add", vda, "autosnap-orphan").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	rows = listBitmaps(t, dom.Name)
	var kinds []string
	for _, r := range rows {
		kinds = append(kinds, r.Kind+":"+r.Name+":"+r.Disk+":"+r.Orphan)
	}
	slices.Sort(kinds)
	want := "bitmap:autosnap-orphan:vda:yes bitmap:autosnap-t1:vda:no bitmap:autosnap-t1:vdb:no checkpoint:autosnap-t1:vda,vdb:"
	if strings.Join(kinds, " ") != want {
		t.Errorf("list while shut off:\n got %s\nwant %s", strings.Join(kinds, " "), want)
	}

	before := imageBitmapNames(t, vda)
	mustRun(t, "--host", testbed.URI, "--dry-run", "bitmaps", "cleanup", dom.Name)
	if got := imageBitmapNames(t, vda); !slices.Equal(got, before) {
		t.Errorf("dry run changed vda's bitmaps: %v → %v", before, got)
	}
	if n := len(listBitmaps(t, dom.Name)); n != len(rows) {
		t.Errorf("dry run changed the listing: %d rows, want %d", n, len(rows))
	}

	mustRun(t, "--host", testbed.URI, "bitmaps", "cleanup", dom.Name)
	if rows := listBitmaps(t, dom.Name); len(rows) != 0 {
		t.Errorf("after cleanup: %+v", rows)
	}
	for _, disk := range []string{"vda", "vdb"} {
		if got := imageBitmapNames(t, dom.Chain(t, disk)[0]); !slices.Equal(got, []string{"theirs"}) {
			t.Errorf("%s's bitmaps after cleanup: %v, want only the other tool's", disk, got)
		}
	}
	if _, err := bed.Conn.DomainCheckpointLookupByName(dom.Dom, "theirs", 0); err != nil {
		t.Errorf("cleanup removed another tool's checkpoint: %v", err)
	}
}
