// Package selector parses and applies the --vmid guest selection grammar of
// cv4pve-autosnap, with two of its bugs fixed: the '%' wildcards mean what its
// documentation says (x% starts with, %x ends with), and an excluded range such
// as -200:299 only excludes.
//
// A selection is a comma-separated list of tokens (spaces around tokens are
// ignored):
//
//	all, @all                       every guest
//	all-NODE, @all-NODE, @node-NODE guests on node NODE
//	@pool-NAME                      guests in pool NAME or a pool nested in it (NAME/…)
//	@tag-NAME                       guests tagged NAME
//	123                             the guest with id 123 (0 never matches)
//	100:199                         ids 100 to 199 inclusive
//	UUID                            the guest with that UUID (36-char canonical form)
//	%x%, x%, %x                     names containing, starting with, ending with x
//	NAME                            guests named NAME
//	-TOKEN                          excludes what TOKEN selects, wherever it stands
//
// Keywords, names, nodes, pools, tags and UUIDs compare case-insensitively.
// The package is pure: it selects from a list of guests given to it.
package selector

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/autosnap/autosnap/internal/driver"
)

// ErrNoMatch is wrapped by the error Select returns when a selection selects no guest.
var ErrNoMatch = errors.New("no guest selected")

// validForms is quoted in errors about malformed tokens.
const validForms = "all, @all, all-NODE, @all-NODE, @node-NODE, @pool-NAME, @tag-NAME, ID, FIRST:LAST, UUID, %TEXT%, TEXT%, %TEXT, NAME, or any of these prefixed with - to exclude"

type kind uint8

const (
	kindAll kind = iota
	kindNode
	kindPool
	kindTag
	kindID
	kindRange
	kindUUID
	kindContains
	kindPrefix
	kindSuffix
	kindName
)

type token struct {
	kind    kind
	exclude bool
	text    string // node, pool, tag, uuid (lower case), wildcard text or name
	lo, hi  int    // id (lo) or range
}

// Selector is a parsed selection. The zero value is not useful; use Parse.
type Selector struct {
	tokens []token
}

// Result is what a selection selects from a list of guests.
type Result struct {
	// Guests are the selected guests, each once (by Guest.Key), ordered by the
	// first token that included them and, within a token, by input order.
	Guests []driver.Guest
	// Unmatched are the including tokens, in normalised form, that matched no
	// guest at all, for the caller to warn about.
	Unmatched []string
}

// Parse parses a selection. It fails on an empty selection or token, an unknown
// @ form, a malformed range or wildcard, and a selection that only excludes.
func Parse(s string) (*Selector, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("empty guest selection: use e.g. @all, 100, 100:199 or a guest name")
	}
	sel := &Selector{}
	for i, raw := range strings.Split(s, ",") {
		tok, err := parseToken(strings.TrimSpace(raw))
		if err != nil {
			return nil, fmt.Errorf("guest selection %q, token %d: %w", s, i+1, err)
		}
		sel.tokens = append(sel.tokens, tok)
	}
	if !slices.ContainsFunc(sel.tokens, func(t token) bool { return !t.exclude }) {
		return nil, fmt.Errorf("guest selection %q only excludes: say what to include too, e.g. @all,%s", s, strings.TrimSpace(s))
	}
	return sel, nil
}

// NeedsTags reports whether the selection looks at guests' tags (an @tag-NAME token,
// including or excluding), so a caller knows whether the guests it selects from must
// have their tags loaded (see driver.LoadTags).
func (s *Selector) NeedsTags() bool {
	return slices.ContainsFunc(s.tokens, func(t token) bool { return t.kind == kindTag })
}

func parseToken(t string) (token, error) {
	if t == "" {
		return token{}, errors.New("empty token: remove the extra comma")
	}
	var tok token
	if rest, ok := strings.CutPrefix(t, "-"); ok {
		tok.exclude = true
		t = strings.TrimSpace(rest)
		if t == "" {
			return token{}, errors.New(`"-" excludes nothing: follow it with what to exclude, e.g. -100`)
		}
		if strings.HasPrefix(t, "-") {
			return token{}, fmt.Errorf("%q: exclude with a single '-'", "-"+t)
		}
	}
	if err := tok.parseInclude(t); err != nil {
		return token{}, err
	}
	return tok, nil
}

// parseInclude fills in the kind and operands of t, a token without its '-'.
func (tok *token) parseInclude(t string) error {
	named := func(k kind, name, form string) error {
		name = strings.TrimSpace(name)
		if name == "" {
			return fmt.Errorf("%q names nothing: use %s", t, form)
		}
		tok.kind, tok.text = k, name
		return nil
	}
	switch {
	case strings.EqualFold(t, "all") || strings.EqualFold(t, "@all"):
		tok.kind = kindAll
		return nil
	case hasPrefixFold(t, "all-"):
		return named(kindNode, t[len("all-"):], "all-NODE")
	case hasPrefixFold(t, "@all-"):
		return named(kindNode, t[len("@all-"):], "@all-NODE")
	case hasPrefixFold(t, "@node-"):
		return named(kindNode, t[len("@node-"):], "@node-NODE")
	case hasPrefixFold(t, "@pool-"):
		// Trailing '/' would make the nested-pool test look for "NAME//…".
		return named(kindPool, strings.TrimRightFunc(t[len("@pool-"):], func(r rune) bool {
			return r == '/' || unicode.IsSpace(r)
		}), "@pool-NAME")
	case hasPrefixFold(t, "@tag-"):
		return named(kindTag, t[len("@tag-"):], "@tag-NAME")
	case strings.HasPrefix(t, "@"):
		return fmt.Errorf("unknown selection %q: valid forms are %s", t, validForms)
	case isDigits(t):
		n, err := strconv.Atoi(t)
		if err != nil {
			return fmt.Errorf("guest id %q is out of range", t)
		}
		tok.kind, tok.lo, tok.hi = kindID, n, n
		return nil
	case strings.Contains(t, ":") && strings.Trim(t, "0123456789:") == "":
		return tok.parseRange(t)
	case isUUID(t):
		tok.kind, tok.text = kindUUID, strings.ToLower(t)
		return nil
	case strings.Contains(t, "%"):
		return tok.parseWildcard(t)
	}
	tok.kind, tok.text = kindName, t
	return nil
}

func (tok *token) parseRange(t string) error {
	bad := fmt.Errorf("bad range %q: use FIRST:LAST with FIRST ≤ LAST, e.g. 100:199", t)
	a, b, _ := strings.Cut(t, ":")
	if !isDigits(a) || !isDigits(b) {
		return bad
	}
	lo, err1 := strconv.Atoi(a)
	hi, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("bad range %q: guest id out of range", t)
	}
	if lo > hi {
		return bad
	}
	tok.kind, tok.lo, tok.hi = kindRange, lo, hi
	return nil
}

func (tok *token) parseWildcard(t string) error {
	lead := strings.HasPrefix(t, "%")
	trail := len(t) > 1 && strings.HasSuffix(t, "%")
	inner := strings.TrimPrefix(t, "%")
	if trail {
		inner = strings.TrimSuffix(inner, "%")
	}
	switch {
	case inner == "":
		return fmt.Errorf("wildcard %q matches every name: use @all, or put text next to %%", t)
	case strings.Contains(inner, "%"):
		return fmt.Errorf("wildcard %q: %% may only stand at the start (%%TEXT, ends with) or end (TEXT%%, starts with) or both (%%TEXT%%, contains)", t)
	case lead && trail:
		tok.kind = kindContains
	case lead:
		tok.kind = kindSuffix
	default:
		tok.kind = kindPrefix
	}
	tok.text = inner
	return nil
}

// hasPrefixFold reports whether s starts with the ASCII prefix p, ignoring case.
func hasPrefixFold(s, p string) bool {
	return len(s) >= len(p) && strings.EqualFold(s[:len(p)], p)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range []byte(s) {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// String returns the normalised selection: keywords in their @ form, ids without
// leading zeros, UUIDs in lower case, everything else as given. Parse(s.String())
// yields an equivalent Selector with the same String.
func (s *Selector) String() string {
	parts := make([]string, len(s.tokens))
	for i, t := range s.tokens {
		parts[i] = t.String()
	}
	return strings.Join(parts, ",")
}

func (t token) String() string {
	var s string
	switch t.kind {
	case kindAll:
		s = "@all"
	case kindNode:
		s = "@node-" + t.text
	case kindPool:
		s = "@pool-" + t.text
	case kindTag:
		s = "@tag-" + t.text
	case kindID:
		s = strconv.Itoa(t.lo)
	case kindRange:
		s = strconv.Itoa(t.lo) + ":" + strconv.Itoa(t.hi)
	case kindContains:
		s = "%" + t.text + "%"
	case kindPrefix:
		s = t.text + "%"
	case kindSuffix:
		s = "%" + t.text
	default: // kindUUID, kindName
		s = t.text
	}
	if t.exclude {
		return "-" + s
	}
	return s
}

func (t token) matches(g driver.Guest) bool {
	switch t.kind {
	case kindAll:
		return true
	case kindNode:
		return strings.EqualFold(g.Node, t.text)
	case kindPool:
		return slices.ContainsFunc(g.Pools, func(p string) bool {
			return strings.EqualFold(p, t.text) ||
				len(p) > len(t.text) && p[len(t.text)] == '/' && strings.EqualFold(p[:len(t.text)], t.text)
		})
	case kindTag:
		return slices.ContainsFunc(g.Tags, func(tag string) bool { return strings.EqualFold(tag, t.text) })
	case kindID, kindRange:
		return g.ID > 0 && g.ID >= t.lo && g.ID <= t.hi
	case kindUUID:
		return strings.EqualFold(g.UUID, t.text)
	case kindContains:
		return strings.Contains(strings.ToLower(g.Name), strings.ToLower(t.text))
	case kindPrefix:
		return strings.HasPrefix(strings.ToLower(g.Name), strings.ToLower(t.text))
	case kindSuffix:
		return strings.HasSuffix(strings.ToLower(g.Name), strings.ToLower(t.text))
	default: // kindName
		return strings.EqualFold(g.Name, t.text)
	}
}

// Select applies the selection to guests. Every including token adds its matches
// in guest order; then every guest an excluding token matches is removed, so an
// exclusion wins wherever it stands. Templates are not filtered out. When nothing
// is left, Select returns the Result together with an error wrapping ErrNoMatch.
func (s *Selector) Select(guests []driver.Guest) (Result, error) {
	var res Result
	seen := map[string]bool{}
	for _, t := range s.tokens {
		if t.exclude {
			continue
		}
		hit := false
		for _, g := range guests {
			if !t.matches(g) {
				continue
			}
			hit = true
			if k := g.Key(); !seen[k] {
				seen[k] = true
				res.Guests = append(res.Guests, g)
			}
		}
		if !hit {
			res.Unmatched = append(res.Unmatched, t.String())
		}
	}
	matched := len(res.Guests)
	res.Guests = slices.DeleteFunc(res.Guests, func(g driver.Guest) bool {
		return slices.ContainsFunc(s.tokens, func(t token) bool { return t.exclude && t.matches(g) })
	})
	if len(res.Guests) == 0 {
		if matched > 0 {
			return res, fmt.Errorf("%w: guest selection %q excludes all %d guests it includes", ErrNoMatch, s.String(), matched)
		}
		return res, fmt.Errorf("%w: guest selection %q matches none of the %d guests found (check names, ids and permissions)", ErrNoMatch, s.String(), len(guests))
	}
	return res, nil
}
