package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/selector"
)

// needsTags reports whether sel selects by tag, so that the guests' tags must be read
// first: drivers that read tags lazily leave them nil (see driver.TagLoader).
func needsTags(sel *selector.Selector) bool {
	if n, ok := any(sel).(interface{ NeedsTags() bool }); ok {
		return n.NeedsTags()
	}
	// Fallback until selector.(*Selector).NeedsTags exists: String lists every token in
	// normalised form, a tag token as @tag-NAME. A false positive only costs the reads.
	for _, tok := range strings.Split(sel.String(), ",") {
		if strings.HasPrefix(strings.ToLower(strings.TrimPrefix(tok, "-")), "@tag-") {
			return true
		}
	}
	return false
}

// namedLister is a driver that can look guests up by name (the libvirt driver).
type namedLister interface {
	GuestsNamed(ctx context.Context, names []string) ([]driver.Guest, error)
}

// listGuests lists the guests sel selects from. A selection of plain names (see
// selector.PlainNames) on a driver that looks guests up by name gets only those
// guests, so its cost does not grow with the other guests of the host; when a name is
// not found exactly (NAME tokens compare case-insensitively, libvirt names do not) or
// the lookup fails otherwise, and for every other selection, it is every guest.
func (g *GlobalOptions) listGuests(ctx context.Context, d driver.Driver, sel *selector.Selector) ([]driver.Guest, error) {
	if sel != nil {
		if names, ok := sel.PlainNames(); ok {
			if nl, ok := d.(namedLister); ok {
				if gs, err := nl.GuestsNamed(ctx, names); err == nil {
					return gs, nil
				}
			}
		}
	}
	return d.Guests(ctx)
}

// pick applies sel, given as what ("--vmid", "GUEST"), to guests, reading their tags
// first when sel needs them. Tokens that match no guest are warned about on stderr
// (not in cv4pve mode) and remembered for missing; a selection that selects nothing at all is an error wrapping
// selector.ErrNoMatch.
func (g *GlobalOptions) pick(ctx context.Context, d driver.Driver, what string, sel *selector.Selector, guests []driver.Guest) ([]driver.Guest, error) {
	if needsTags(sel) {
		if err := g.loadTags(ctx, d, guests); err != nil {
			return nil, err
		}
		g.tagsRead = true
	}
	res, err := sel.Select(guests)
	if !g.cv4pve() { // cv4pve-autosnap ignores such a token silently
		for _, u := range res.Unmatched {
			fmt.Fprintf(g.stderr, "WARNING: %s token %q matches no guest\n", what, u)
		}
	}
	if err != nil {
		return nil, err
	}
	if len(res.Unmatched) > 0 {
		g.unmatchedIn = what
		g.unmatched = append(g.unmatched, res.Unmatched...)
	}
	return res.Guests, nil
}

// ensureTags fills in the tags of guests a selection returned, unless the selection
// already read them.
func (g *GlobalOptions) ensureTags(ctx context.Context, d driver.Driver, guests []driver.Guest) error {
	if g.tagsRead {
		return nil
	}
	return g.loadTags(ctx, d, guests)
}

// loadTags fills in the tags of guests where the driver reads them lazily, within
// --timeout.
func (g *GlobalOptions) loadTags(ctx context.Context, d driver.Driver, guests []driver.Guest) error {
	tctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	if err := driver.LoadTags(tctx, d, guests); err != nil {
		return fmt.Errorf("reading the guests' tags: %w", err)
	}
	return nil
}

// missing is the error a command returns after doing its work for the guests that were
// selected, when some selection tokens matched no guest: a typo or a renamed guest must
// not silently stop being protected. With --ignore-missing it is nil.
func (g *GlobalOptions) missing() error {
	if len(g.unmatched) == 0 || g.IgnoreMissing {
		return nil
	}
	q := make([]string, len(g.unmatched))
	for i, u := range g.unmatched {
		q[i] = strconv.Quote(u)
	}
	what := "token " + q[0] + " matches"
	if len(q) > 1 {
		what = "tokens " + strings.Join(q, ", ") + " match"
	}
	return fmt.Errorf("%s %s no guest (the other guests were processed): fix %s, or add --ignore-missing if a guest may be absent", g.unmatchedIn, what, g.unmatchedIn)
}
