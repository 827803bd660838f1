package driver

import (
	"context"
	"fmt"
	"testing"
)

type tagHost struct {
	Driver // unused methods panic
	node   string
	lazy   bool
	loads  int
}

func (h *tagHost) Guests(context.Context) ([]Guest, error) {
	var tags []string
	if !h.lazy {
		tags = []string{"eager"}
	}
	return []Guest{{Node: h.node, Name: h.node + "-a", Tags: tags}, {Node: h.node, Name: h.node + "-b", Tags: tags}}, nil
}

type lazyHost struct{ *tagHost }

func (h lazyHost) LoadTags(_ context.Context, gs []Guest) error {
	h.loads++
	for i := range gs {
		if gs[i].Node != h.node {
			return fmt.Errorf("guest %s of %s sent to %s", gs[i].Name, gs[i].Node, h.node)
		}
		gs[i].Tags = []string{"lazy-" + gs[i].Name}
	}
	return nil
}

// TestFleetLoadTags: a fleet reads tags through each guest's own host, and leaves
// the tags of hosts that list them eagerly as they are.
func TestFleetLoadTags(t *testing.T) {
	a := lazyHost{&tagHost{node: "a", lazy: true}}
	b := &tagHost{node: "b"}
	c := lazyHost{&tagHost{node: "c", lazy: true}}
	f := NewFleet([]Driver{a, b, c})
	gs, err := f.Guests(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Interleave hosts to check each tag lands on its own guest.
	gs = []Guest{gs[4], gs[0], gs[2], gs[5], gs[1]}
	if err := LoadTags(context.Background(), f, gs); err != nil {
		t.Fatal(err)
	}
	want := []string{"[lazy-c-a]", "[lazy-a-a]", "[eager]", "[lazy-c-b]", "[lazy-a-b]"}
	for i, g := range gs {
		if got := fmt.Sprint(g.Tags); got != want[i] {
			t.Errorf("%s: tags %s, want %s", g.Name, got, want[i])
		}
	}
	if a.loads != 1 || c.loads != 1 {
		t.Errorf("LoadTags calls per host: a %d, c %d; want one each", a.loads, c.loads)
	}
}
