package cli

import (
	"strings"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
)

// consistencyField is the description field in which autosnap records how a
// snapshot's disks were captured (see naming.Description); drivers read it back into
// driver.Snapshot.Consistency.
const consistencyField = "consistency"

// createConsistency is what a snapshot taken with opts of a guest in state st captures.
func createConsistency(st driver.State, opts driver.CreateOptions) driver.Consistency {
	switch {
	case !st.Active():
		return driver.ConsistencyOffline
	case opts.Memory || opts.MemoryFile != "":
		return driver.ConsistencyMemory
	case opts.Quiesce:
		return driver.ConsistencyQuiesced
	}
	return driver.ConsistencyCrash
}

// withConsistency returns desc with "consistency: c" as its last line, in the format
// naming.Description writes, replacing a consistency line desc already has after its
// first line. The first line, which tells autosnap's snapshots from the user's, is
// kept, so a user snapshot stays one. An empty c returns desc unchanged.
func withConsistency(desc string, c driver.Consistency) string {
	if c == driver.ConsistencyUnknown {
		return desc
	}
	first, rest, _ := strings.Cut(desc, "\n")
	lines := []string{first}
	for line := range strings.Lines(rest) {
		k, _, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == consistencyField {
			continue
		}
		lines = append(lines, strings.TrimRight(line, "\r\n"))
	}
	return strings.Join(append(lines, consistencyField+": "+string(c)), "\n")
}

// statesConsistency reports whether desc records a consistency itself.
func statesConsistency(desc string) bool {
	_, ok := naming.DescriptionFields(desc)[consistencyField]
	return ok
}

// describeConsistency says in words what c means, for the line a create prints.
func describeConsistency(c driver.Consistency) string {
	switch c {
	case driver.ConsistencyQuiesced:
		return "quiesced through the guest agent"
	case driver.ConsistencyOffline:
		return "guest shut off"
	case driver.ConsistencyMemory:
		return "with RAM"
	case driver.ConsistencyCrash:
		return "crash-consistent only"
	}
	return "consistency unknown"
}

// shownDescription is desc as list and info show it: without the consistency line,
// which they show in a column of its own.
func shownDescription(desc string) string {
	first, rest, found := strings.Cut(desc, "\n")
	if !found {
		return desc
	}
	lines := []string{first}
	for line := range strings.Lines(rest) {
		k, _, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == consistencyField {
			continue
		}
		lines = append(lines, strings.TrimRight(line, "\r\n"))
	}
	return strings.TrimRight(strings.Join(lines, "\n"), "\n")
}
