package repo

import (
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/retention"
)

// modelImage is a qcow2 image in the model: the blocks it holds and its backing.
type modelImage struct {
	blocks  map[int]int
	backing string // point ID, "" for none
}

const modelBlocks = 16

// view is what point's disk reads through its chain (-1: never written, reads zero).
func view(imgs map[string]map[string]*modelImage, point, disk string) []int {
	out := make([]int, modelBlocks)
	for b := range out {
		out[b] = -1
		for p := point; p != ""; {
			img := imgs[p][disk]
			if v, ok := img.blocks[b]; ok {
				out[b] = v
				break
			}
			p = img.backing
		}
	}
	return out
}

// TestPlanRemovalProperty: on random repositories (fulls, incs, diffs, copies, disks
// added, dropped and copied whole) and random removals, carrying out the plan's
// rebases the way a safe qemu-img rebase does leaves every kept point reading exactly
// as before, backed only by kept points, with a kept (or no) parent.
func TestPlanRemovalProperty(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	for iter := 0; iter < 500; iter++ {
		var ps []Point
		imgs := map[string]map[string]*modelImage{}
		n := 1 + rng.Intn(14)
		val := 0
		var chainFull, newest string
		for i := 0; i < n; i++ {
			level := []string{LevelFull, LevelInc, LevelInc, LevelDiff, LevelCopy}[rng.Intn(5)]
			if newest == "" && (level == LevelInc || level == LevelDiff) {
				level = LevelFull
			}
			id := NewID(t0.Add(time.Duration(i)*time.Hour), level)
			parent := ""
			switch level {
			case LevelInc:
				parent = newest
			case LevelDiff:
				parent = chainFull
			}
			chain := ""
			switch level {
			case LevelFull:
				chain = id
			case LevelInc, LevelDiff:
				chain = chainFull
			}
			p := Point{Manifest: Manifest{ID: id, Level: level, Parent: parent, Chain: chain}}
			imgs[id] = map[string]*modelImage{}
			for _, disk := range []string{"a", "b"} {
				if rng.Intn(6) == 0 {
					continue // disk absent from this point
				}
				img := &modelImage{blocks: map[int]int{}}
				back := ""
				if parent != "" && imgs[parent][disk] != nil && rng.Intn(8) != 0 {
					back = parent
				}
				img.backing = back
				writes := 1 + rng.Intn(5)
				if back == "" {
					writes = modelBlocks
				}
				for w := 0; w < writes; w++ {
					val++
					img.blocks[rng.Intn(modelBlocks)] = val
				}
				imgs[id][disk] = img
				dm := DiskManifest{Name: disk, File: disk + ".qcow2"}
				if back != "" {
					dm.Backing = backingName(back, disk+".qcow2")
				}
				p.Disks = append(p.Disks, dm)
			}
			ps = append(ps, p)
			if level == LevelFull {
				chainFull = id
			}
			if level != LevelCopy {
				newest = id
			}
		}
		var ds []retention.GFSDecision
		keptAny := false
		for _, p := range ps {
			k := rng.Intn(2) == 0
			keptAny = keptAny || k
			ds = append(ds, retention.GFSDecision{GFSItem: retention.GFSItem{ID: p.ID}, Keep: k})
		}
		if !keptAny {
			ds[len(ds)-1].Keep = true
		}
		before := map[string][]int{}
		for _, p := range ps {
			for _, d := range p.Disks {
				before[p.ID+"/"+d.Name] = view(imgs, p.ID, d.Name)
			}
		}
		pl := planRemoval(ps, ds)
		// Rebase as qemu-img does: copy into the image every block it does not hold
		// where the old and new backing read differently, then switch the backing.
		for _, st := range pl.Rebase {
			img := imgs[st.Point][st.Disk]
			from, _ := backingPoint(st.From)
			if from != img.backing {
				t.Fatalf("step %+v: image is backed by %s", st, img.backing)
			}
			to, ok := backingPoint(st.To)
			if !ok {
				to = ""
			}
			oldv := view(imgs, from, st.Disk)
			newv := make([]int, modelBlocks)
			for b := range newv {
				newv[b] = -1
			}
			if to != "" {
				newv = view(imgs, to, st.Disk)
			}
			for b := 0; b < modelBlocks; b++ {
				if _, own := img.blocks[b]; !own && oldv[b] != newv[b] {
					img.blocks[b] = oldv[b]
				}
			}
			img.backing = to
		}
		removed := map[string]bool{}
		for _, id := range pl.Remove {
			removed[id] = true
		}
		chainOf := map[string]string{}
		for _, p := range ps {
			chainOf[p.ID] = p.Chain
		}
		for _, p := range ps {
			if removed[p.ID] {
				continue
			}
			// Every kept point of a chain is in a chain whose full is kept, or whose
			// new full (Rechain) is kept and standalone.
			if c := p.Chain; c != "" && removed[c] {
				root, ok := pl.Rechain[c]
				if !ok || removed[root] || chainOf[root] != c {
					t.Fatalf("iter %d: kept %s of chain %s has no new full (rechain %v)", iter, p.ID, c, pl.Rechain)
				}
				if np := pl.Reparent[root]; np != "" {
					t.Fatalf("iter %d: new full %s keeps parent %s", iter, root, np)
				}
				for _, img := range imgs[root] {
					if img.backing != "" {
						t.Fatalf("iter %d: new full %s is still backed by %s", iter, root, img.backing)
					}
				}
			}
			if np, ok := pl.Reparent[p.ID]; ok {
				p.Parent = np
			}
			if removed[p.Parent] {
				t.Fatalf("iter %d: kept %s keeps removed parent %s", iter, p.ID, p.Parent)
			}
			for _, d := range p.Disks {
				img := imgs[p.ID][d.Name]
				if removed[img.backing] {
					t.Fatalf("iter %d: kept %s/%s still backed by removed %s", iter, p.ID, d.Name, img.backing)
				}
				if got := view(imgs, p.ID, d.Name); !slices.Equal(got, before[p.ID+"/"+d.Name]) {
					t.Fatalf("iter %d: %s/%s reads %v after the plan, %v before\nplan %s", iter, p.ID, d.Name, got, before[p.ID+"/"+d.Name], fmt.Sprint(pl))
				}
			}
		}
	}
}
