package selector

// PlainNames returns the names of a selection made only of including NAME tokens (no
// keyword, id, range, UUID, wildcard, node, pool, tag or exclusion), in token order,
// and false for any other selection. A caller may then look those guests up by name
// instead of listing every guest; it must fall back to the full list when a name is
// not found exactly, because NAME tokens compare case-insensitively.
func (s *Selector) PlainNames() ([]string, bool) {
	names := make([]string, 0, len(s.tokens))
	for _, t := range s.tokens {
		if t.exclude || t.kind != kindName {
			return nil, false
		}
		names = append(names, t.text)
	}
	return names, len(names) > 0
}
