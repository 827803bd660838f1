package cli

import (
	"slices"
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
	return strings.Join(append(linesWithoutConsistency(desc), consistencyField+": "+string(c)), "\n")
}

// linesWithoutConsistency splits desc into lines and drops a consistency line after
// the first (the first line tells autosnap's snapshots from the user's and stays)
// that records one of naming.ConsistencyLevels. A consistency line with any other
// value is an admin's text: it stays, so rewriting the recorded line never makes a
// snapshot autosnap's that was not (naming.IsOurs) nor hides the admin's words.
func linesWithoutConsistency(desc string) []string {
	first, rest, _ := strings.Cut(desc, "\n")
	lines := []string{first}
	for line := range strings.Lines(rest) {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == consistencyField && slices.Contains(naming.ConsistencyLevels, strings.TrimSpace(v)) {
			continue
		}
		lines = append(lines, strings.TrimRight(line, "\r\n"))
	}
	return lines
}

// statesConsistency reports whether desc records a consistency itself: a
// consistency line with one of naming.ConsistencyLevels (any other value is an
// admin's text, see linesWithoutConsistency).
func statesConsistency(desc string) bool {
	v, ok := naming.DescriptionFields(desc)[consistencyField]
	return ok && slices.Contains(naming.ConsistencyLevels, v)
}

// shownDescription is desc as list and info show it: without the consistency line,
// which they show in a column of its own.
func shownDescription(desc string) string {
	if !strings.Contains(desc, "\n") {
		return desc
	}
	return strings.TrimRight(strings.Join(linesWithoutConsistency(desc), "\n"), "\n")
}
