package drivertest

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
)

// Span is how much of each disk the data checks model and compare, from offset 0: every
// byte of it, written or not, is checked against the model after each step.
const Span = 1 << 20

// region is one write of a round.
type region struct {
	off, n int
	what   string
}

// regionsOf lists the writes of round r on disk i. Each round writes a region of its
// own, partly overwrites the previous round's region (so layers hold partial clusters
// over partial clusters) and overwrites a shared region that crosses qcow2 cluster
// boundaries; offsets are not cluster-aligned and differ per disk.
func regionsOf(r, i int) []region {
	const own, step = 64 << 10, 96 << 10
	shift := 512 * i
	rs := []region{
		{r*step + shift, own, fmt.Sprintf("round %d's own region", r)},
		{800<<10 + 1000 + shift, 150 << 10, "the shared region"},
	}
	if r > 1 {
		rs = append(rs, region{(r-1)*step + 32<<10 + shift, 16 << 10, fmt.Sprintf("round %d's overwrite of round %d's region", r, r-1)})
	}
	return rs
}

// maxRound is the last round whose regions stay below the shared region.
const maxRound = 7

func pattern(r, i, k int) byte { return byte(0x11*r + 3*i + k) }

// logged is one write in a model's history.
type logged struct {
	disk int
	region
}

// data models the guest-visible content of the first Span bytes of every disk of one
// guest, and writes and checks it through the fixture.
type data struct {
	f     Fixture
	g     *driver.Guest
	disks [][]byte
	// log lists the writes that made the model, oldest first, for failure messages.
	log []logged
	// saved are the models at each snapshot, by snapshot name.
	saved map[string]*data
}

func newData(f Fixture, g *driver.Guest, disks int) *data {
	d := &data{f: f, g: g, saved: map[string]*data{}}
	for i := 0; i < disks; i++ {
		d.disks = append(d.disks, make([]byte, Span))
	}
	return d
}

func (d *data) clone() *data {
	c := &data{f: d.f, g: d.g, log: append([]logged(nil), d.log...)}
	for i := range d.disks {
		c.disks = append(c.disks, bytes.Clone(d.disks[i]))
	}
	return c
}

// write performs round r's writes on every disk and records them in the model.
func (d *data) write(t *testing.T, r int) {
	t.Helper()
	if r < 1 || r > maxRound {
		t.Fatalf("drivertest: round %d out of 1..%d", r, maxRound)
	}
	for i := range d.disks {
		for k, rg := range regionsOf(r, i) {
			p := pattern(r, i, k)
			d.f.Write(t, *d.g, i, int64(rg.off), p, rg.n)
			copy(d.disks[i][rg.off:], bytes.Repeat([]byte{p}, rg.n))
			d.log = append(d.log, logged{i, rg})
		}
	}
}

// save remembers the current model as snapshot name's content.
func (d *data) save(name string) { d.saved[name] = d.clone() }

// reverted makes the model snapshot name's content, as a revert does.
func (d *data) reverted(t *testing.T, name string) {
	t.Helper()
	s, ok := d.saved[name]
	if !ok {
		t.Fatalf("drivertest: no model saved for snapshot %s", name)
	}
	c := s.clone()
	d.disks, d.log = c.disks, c.log
}

// check reads the whole Span of every disk and compares every byte with the model.
func (d *data) check(t *testing.T, when string) {
	t.Helper()
	for i, want := range d.disks {
		got := d.f.Read(t, *d.g, i, 0, Span)
		if bytes.Equal(got, want) {
			continue
		}
		bad, first := 0, -1
		for o := range want {
			if got[o] != want[o] {
				bad++
				if first < 0 {
					first = o
				}
			}
		}
		whatWant := "never written (zero)"
		for k := len(d.log) - 1; k >= 0; k-- {
			if w := d.log[k]; w.disk == i && w.off <= first && first < w.off+w.n {
				whatWant = w.what
				break
			}
		}
		t.Fatalf("%s: disk %d of %s: %d of %d bytes differ; first at offset %d: %#x, want %#x from %s",
			when, i, d.g.Name, bad, Span, first, got[first], want[first], whatWant)
	}
}
