package drivertest

import (
	"errors"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
)

// testProtector: protecting one of autosnap's snapshots is listed (Protected) and
// recorded in its description, which stays ours; unprotecting clears it; repeating
// either changes nothing; a user snapshot is refused and left as it was; a missing
// snapshot is ErrNotFound; the guest's data is untouched throughout.
func testProtector(t *testing.T, s *suite, d driver.Driver) {
	p := d.(driver.Protector)
	g := s.f.NewGuest(t, driver.StateShutoff, 1)
	dd := newData(s.f, &g, 1)
	dd.write(t, 1)
	snap(t, d, dd, "autoprot1")
	dd.write(t, 2)
	user := "before upgrade\nkept by hand"
	if _, err := d.CreateSnapshot(ctx(t), g, driver.CreateOptions{Name: "userprot", Description: user}); err != nil {
		t.Fatalf("CreateSnapshot userprot: %v", err)
	}
	listed := func(name string) driver.Snapshot {
		t.Helper()
		for _, sn := range snapList(t, d, g) {
			if sn.Name == name {
				return sn
			}
		}
		t.Fatalf("snapshot %s is not listed", name)
		return driver.Snapshot{}
	}
	if sn := listed("autoprot1"); sn.Protected {
		t.Errorf("a new snapshot is listed as protected")
	}
	for i := 0; i < 2; i++ {
		if err := p.SetProtected(ctx(t), g, "autoprot1", true); err != nil {
			t.Fatalf("SetProtected(true) #%d: %v", i+1, err)
		}
		sn := listed("autoprot1")
		if !sn.Protected || !naming.IsProtected(sn.Description) || !naming.IsOurs(sn.Description) {
			t.Errorf("after protecting #%d: protected %v, description %q (ours %v)", i+1, sn.Protected, sn.Description, naming.IsOurs(sn.Description))
		}
	}
	for i := 0; i < 2; i++ {
		if err := p.SetProtected(ctx(t), g, "autoprot1", false); err != nil {
			t.Fatalf("SetProtected(false) #%d: %v", i+1, err)
		}
		sn := listed("autoprot1")
		if sn.Protected || naming.IsProtected(sn.Description) || !naming.IsOurs(sn.Description) {
			t.Errorf("after unprotecting #%d: protected %v, description %q (ours %v)", i+1, sn.Protected, sn.Description, naming.IsOurs(sn.Description))
		}
	}
	if err := p.SetProtected(ctx(t), g, "userprot", true); err == nil || errors.Is(err, driver.ErrNotFound) {
		t.Errorf("protecting a user snapshot: %v, want a refusal", err)
	}
	if sn := listed("userprot"); sn.Protected || sn.Description != user {
		t.Errorf("the refused user snapshot changed: protected %v, description %q", sn.Protected, sn.Description)
	}
	if err := p.SetProtected(ctx(t), g, "autonosuch", true); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("protecting a missing snapshot: %v, want ErrNotFound", err)
	}
	dd.check(t, "after protecting")
	revert(t, d, dd, "autoprot1", driver.RevertOptions{}, driver.StateShutoff)
}
