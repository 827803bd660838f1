package selector

import (
	"strings"

	"github.com/autosnap/autosnap/internal/driver"
)

// Exact returns the guests that s names without the selection grammar: those whose
// name is exactly s (case-sensitive, as libvirt names are), or, when none is, whose
// UUID is s (any case). Commands that take one guest try it before Parse, so a guest
// whose name contains ',' or starts with '-', '@' or '%' can be named, and such a name
// is never split into other guests' names.
func Exact(guests []driver.Guest, s string) []driver.Guest {
	var out []driver.Guest
	for _, g := range guests {
		if g.Name == s {
			out = append(out, g)
		}
	}
	if len(out) > 0 || !isUUID(s) {
		return out
	}
	for _, g := range guests {
		if strings.EqualFold(g.UUID, s) {
			out = append(out, g)
		}
	}
	return out
}
