package policy

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/selector"
)

// Conflict is two policies that would fight over one guest: both select it on one
// host and both snapshot it under one label, or both back it up into one target.
type Conflict struct {
	// A and B are the policies, A first in the file.
	A, B         string
	LineA, LineB int
	// Guest is the guest both select: a real guest (Overlaps), or for a conflict
	// found in the file alone an example guest both selections provably take.
	Guest string
	// What is what both do to it, e.g. `snapshot label "web"`.
	What string
	// Static is set when the conflict was found from the selections alone.
	Static bool
}

func (c Conflict) String() string {
	if c.Static {
		return fmt.Sprintf("policies %q (line %d) and %q (line %d) overlap: both select %s on one host and both use %s; make the selections disjoint (e.g. exclude with -TOKEN) or use different labels/targets",
			c.A, c.LineA, c.B, c.LineB, c.Guest, c.What)
	}
	return fmt.Sprintf("policies %q (line %d) and %q (line %d) overlap: both select guest %s and both use %s; make the selections disjoint (e.g. exclude with -TOKEN) or use different labels/targets",
		c.A, c.LineA, c.B, c.LineB, c.Guest, c.What)
}

// Connection returns the connection named name, or nil.
func (c *Config) Connection(name string) *Connection {
	for i := range c.Connections {
		if c.Connections[i].Name == name {
			return &c.Connections[i]
		}
	}
	return nil
}

// Policy returns the policy named name, or nil.
func (c *Config) Policy(name string) *Policy {
	for i := range c.Policies {
		if c.Policies[i].Name == name {
			return &c.Policies[i]
		}
	}
	return nil
}

// HostOf returns the --host value p runs on, and its connection when p names one
// (nil when p's host is a --host value itself).
func (c *Config) HostOf(p *Policy) (string, *Connection) {
	if conn := c.Connection(p.Host); conn != nil {
		return conn.Host, conn
	}
	return p.Host, nil
}

// hostSet is the normalised hosts of a --host value (a fleet is comma-separated).
func hostSet(h string) []string {
	var out []string
	for _, part := range strings.Split(h, ",") {
		if s := strings.ToLower(strings.TrimRight(strings.TrimSpace(part), "/")); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func sameHost(a, b string) bool {
	bs := hostSet(b)
	return slices.ContainsFunc(hostSet(a), func(h string) bool { return slices.Contains(bs, h) })
}

// sharedWork says what a and b would both do to a guest they both select: the same
// snapshot label, or backups into the same target. Empty when nothing clashes.
func sharedWork(a, b *Policy) []string {
	var out []string
	if a.Snapshot != nil && b.Snapshot != nil && strings.EqualFold(a.Snapshot.Label, b.Snapshot.Label) {
		out = append(out, fmt.Sprintf("snapshot label %q", a.Snapshot.Label))
	}
	if a.Backup != nil && b.Backup != nil && cleanTarget(a.Backup.Target) == cleanTarget(b.Backup.Target) {
		out = append(out, fmt.Sprintf("backup target %q", a.Backup.Target))
	}
	return out
}

func cleanTarget(t string) string {
	t = strings.TrimSpace(t)
	if strings.HasPrefix(t, "/") {
		return filepath.Clean(t)
	}
	return strings.TrimRight(t, "/")
}

// staticConflicts are the conflicts the selections prove without a guest list: a
// guest built from one including token of either selection (the name of a name or
// wildcard token, an id or range end, a tag, pool, node or UUID; any guest for
// @all) that both selections select.
func (c *Config) staticConflicts() []Conflict {
	var out []Conflict
	for i := range c.Policies {
		for j := i + 1; j < len(c.Policies); j++ {
			a, b := &c.Policies[i], &c.Policies[j]
			ha, _ := c.HostOf(a)
			hb, _ := c.HostOf(b)
			if !sameHost(ha, hb) {
				continue
			}
			work := sharedWork(a, b)
			if len(work) == 0 {
				continue
			}
			w, ok := sharedWitness(a.VMID, b.VMID)
			if !ok {
				continue
			}
			out = append(out, Conflict{A: a.Name, B: b.Name, LineA: a.Line, LineB: b.Line, Guest: w,
				What: strings.Join(work, " and "), Static: true})
		}
	}
	return out
}

// witnesses are the example guests of a selection's including tokens, with how to
// describe each.
type witness struct {
	g    driver.Guest
	desc string
}

func witnesses(sel *selector.Selector) []witness {
	var out []witness
	for _, t := range strings.Split(sel.String(), ",") {
		if strings.HasPrefix(t, "-") {
			continue
		}
		switch {
		case t == "@all":
			out = append(out, witness{driver.Guest{}, "every guest"})
		case strings.HasPrefix(t, "@node-"):
			n := t[len("@node-"):]
			out = append(out, witness{driver.Guest{Node: n}, "the guests on node " + n})
		case strings.HasPrefix(t, "@pool-"):
			n := t[len("@pool-"):]
			out = append(out, witness{driver.Guest{Pools: []string{n}}, "the guests in pool " + n})
		case strings.HasPrefix(t, "@tag-"):
			n := t[len("@tag-"):]
			out = append(out, witness{driver.Guest{Tags: []string{n}}, "the guests tagged " + n})
		case strings.Contains(t, "%"):
			n := strings.Trim(t, "%")
			out = append(out, witness{driver.Guest{Name: n}, fmt.Sprintf("a guest named %q (matching %s)", n, t)})
		case isNumber(t):
			id, _ := strconv.Atoi(t)
			out = append(out, witness{driver.Guest{ID: id}, "guest " + t})
		case strings.Count(t, ":") == 1 && isNumber(strings.Split(t, ":")[0]) && isNumber(strings.Split(t, ":")[1]):
			lo, _ := strconv.Atoi(strings.Split(t, ":")[0])
			hi, _ := strconv.Atoi(strings.Split(t, ":")[1])
			out = append(out, witness{driver.Guest{ID: lo}, "guest " + strconv.Itoa(lo)}, witness{driver.Guest{ID: hi}, "guest " + strconv.Itoa(hi)})
		default:
			out = append(out, witness{driver.Guest{Name: t, UUID: t}, fmt.Sprintf("guest %q", t)})
		}
	}
	return out
}

func isNumber(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func selects(sel *selector.Selector, g driver.Guest) bool {
	res, err := sel.Select([]driver.Guest{g})
	return err == nil && len(res.Guests) == 1
}

// sharedWitness finds an example guest both selections select; ok false when the
// selections do not prove an overlap.
func sharedWitness(a, b string) (string, bool) {
	sa, err1 := selector.Parse(a)
	sb, err2 := selector.Parse(b)
	if err1 != nil || err2 != nil {
		return "", false
	}
	for _, w := range append(witnesses(sa), witnesses(sb)...) {
		if selects(sa, w.g) && selects(sb, w.g) {
			return w.desc, true
		}
	}
	return "", false
}

// Overlaps returns the conflicts among the policies on host (a connection name or a
// --host value) over its guests, given by name: two policies conflict when both
// select one of guests and snapshot it under one label or back it up into one
// target. The daemon calls it with the guests it lists before a run.
func (c *Config) Overlaps(host string, guests []string) []Conflict {
	gs := make([]driver.Guest, len(guests))
	for i, n := range guests {
		gs[i] = driver.Guest{Name: n}
	}
	return c.OverlapsGuests(host, gs)
}

// OverlapsGuests is Overlaps over full guests, so that ids, tags, pools and nodes
// in the selections count.
func (c *Config) OverlapsGuests(host string, guests []driver.Guest) []Conflict {
	if conn := c.Connection(host); conn != nil {
		host = conn.Host
	}
	var out []Conflict
	for i := range c.Policies {
		a := &c.Policies[i]
		ha, _ := c.HostOf(a)
		if !sameHost(ha, host) {
			continue
		}
		for j := i + 1; j < len(c.Policies); j++ {
			b := &c.Policies[j]
			hb, _ := c.HostOf(b)
			if !sameHost(hb, host) {
				continue
			}
			work := sharedWork(a, b)
			if len(work) == 0 {
				continue
			}
			ga := selectKeys(a.VMID, guests)
			for _, g := range selectGuests(b.VMID, guests) {
				if ga[g.Key()] {
					out = append(out, Conflict{A: a.Name, B: b.Name, LineA: a.Line, LineB: b.Line,
						Guest: guestLabel(g), What: strings.Join(work, " and ")})
				}
			}
		}
	}
	return out
}

// SelectGuests returns the guests of guests that p's vmid selects (none when it
// selects none).
func (p *Policy) SelectGuests(guests []driver.Guest) []driver.Guest {
	return selectGuests(p.VMID, guests)
}

func selectGuests(vmid string, guests []driver.Guest) []driver.Guest {
	sel, err := selector.Parse(vmid)
	if err != nil {
		return nil
	}
	res, _ := sel.Select(guests)
	return res.Guests
}

func selectKeys(vmid string, guests []driver.Guest) map[string]bool {
	out := map[string]bool{}
	for _, g := range selectGuests(vmid, guests) {
		out[g.Key()] = true
	}
	return out
}

func guestLabel(g driver.Guest) string {
	switch {
	case g.ID > 0 && g.Name != "":
		return fmt.Sprintf("%d (%s)", g.ID, g.Name)
	case g.ID > 0:
		return strconv.Itoa(g.ID)
	}
	return g.Name
}
