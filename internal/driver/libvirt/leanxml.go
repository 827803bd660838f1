package libvirt

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
)

// snapFields are the parts of a libvirt snapshot document a driver.Snapshot is made of.
type snapFields struct {
	name, description, state, creationTime, parent string
	memory                                         string // <memory snapshot=…>; "" without <memory>
	disks                                          []driver.SnapshotDisk
}

// snapshot builds the driver's view of a snapshot from its fields.
func (f *snapFields) snapshot() driver.Snapshot {
	s := driver.Snapshot{Name: f.name, Description: f.description, GuestState: f.state, Parent: f.parent, Disks: f.disks}
	s.Protected = naming.IsProtected(f.description)
	if sec, err := strconv.ParseInt(f.creationTime, 10, 64); err == nil {
		s.Created = time.Unix(sec, 0)
	}
	s.Memory = f.memory == "internal" || f.memory == "external"
	s.DiskOnly = f.state == "disk-snapshot"
	internal, external := f.memory == "internal", false
	for _, dk := range f.disks {
		switch dk.Snapshot {
		case "external":
			external = true
		case "internal":
			internal = true
		}
	}
	switch {
	case internal && external:
		s.Location = driver.LocationMixed
	case external:
		s.Location = driver.LocationExternal
	default:
		s.Location = driver.LocationInternal
	}
	switch c := consistencyField(f.description); driver.Consistency(c) {
	case driver.ConsistencyQuiesced, driver.ConsistencyCrash, driver.ConsistencyOffline, driver.ConsistencyMemory:
		s.Consistency = driver.Consistency(c)
	}
	return s
}

// consistencyField is naming.DescriptionFields(desc)["consistency"] without building
// the map: a listing reads it for every snapshot.
func consistencyField(desc string) string {
	_, rest, _ := strings.Cut(desc, "\n")
	v := ""
	for rest != "" {
		var line string
		line, rest, _ = strings.Cut(rest, "\n")
		if k, val, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "consistency" {
			v = strings.TrimSpace(val)
		}
	}
	return v
}

func fieldsOf(x *libvirtxml.DomainSnapshot) snapFields {
	f := snapFields{name: x.Name, description: x.Description, state: x.State, creationTime: x.CreationTime}
	if x.Parent != nil {
		f.parent = x.Parent.Name
	}
	if x.Memory != nil {
		f.memory = x.Memory.Snapshot
	}
	if x.Disks != nil {
		for _, dk := range x.Disks.Disks {
			sd := driver.SnapshotDisk{Name: dk.Name, Snapshot: dk.Snapshot}
			if dk.Source != nil && dk.Source.File != nil {
				sd.File = dk.Source.File.File
			}
			f.disks = append(f.disks, sd)
		}
	}
	return f
}

// decodeSnapshot turns libvirt's snapshot XML into a driver.Snapshot. It reads only
// the elements a Snapshot needs and skips the embedded domain definitions, which are
// most of the document and cost a full decode several times what libvirtd spends
// formatting them. Anything outside the subset libvirt writes (a DOCTYPE, CDATA or
// markup inside a text element, a repeated element, an unknown entity…) is decoded
// by libvirtxml instead, so the result is always what fromXML gives. The skipped
// parts are only checked for balance: a document libvirtxml would reject for a bad
// value inside <domain> is accepted.
func decodeSnapshot(raw string) (driver.Snapshot, error) {
	if f, err := leanSnapshot(raw); err == nil {
		s := f.snapshot()
		detach(&s)
		return s, nil
	}
	// Outside the subset, or malformed: libvirtxml decides, and words the error.
	var x libvirtxml.DomainSnapshot
	if err := x.Unmarshal(raw); err != nil {
		return driver.Snapshot{}, err
	}
	f := fieldsOf(&x)
	return f.snapshot(), nil
}

// detach copies the strings the lean decoder cut out of the document, so a listing
// does not keep every document (mostly the skipped domain) alive, and so the
// document's buffer can be reused (the tap's). The few values libvirt writes for a
// state or a disk's snapshot mode are shared constants.
func detach(s *driver.Snapshot) {
	s.Name, s.Description, s.Parent = strings.Clone(s.Name), strings.Clone(s.Description), strings.Clone(s.Parent)
	s.GuestState = intern(s.GuestState)
	s.Consistency = driver.Consistency(intern(string(s.Consistency)))
	for i := range s.Disks {
		dk := &s.Disks[i]
		dk.Name, dk.Snapshot, dk.File = strings.Clone(dk.Name), intern(dk.Snapshot), strings.Clone(dk.File)
	}
}

// intern returns a constant equal to v when libvirt writes v often, else a copy.
func intern(v string) string {
	for _, c := range [...]string{"", "shutoff", "running", "paused", "disk-snapshot", "external", "internal", "no", "manual",
		"quiesced", "crash", "offline", "memory"} {
		if v == c {
			return c
		}
	}
	return strings.Clone(v)
}

// errNotLean marks a document the lean decoder leaves to libvirtxml.
var errNotLean = errors.New("outside the lean XML subset")

// leanSnapshot decodes a snapshot document with a single forward scan; see
// decodeSnapshot. It fails with errNotLean for a construct outside the subset and
// with a syntax error for a malformed document.
func leanSnapshot(s string) (snapFields, error) {
	var f snapFields
	x := xmlScan{s: s}
	root, err := x.prolog()
	if err != nil {
		return f, err
	}
	if localName(root.name) != "domainsnapshot" {
		return f, errNotLean
	}
	if root.empty {
		return f, nil
	}
	var seen uint8
	once := func(bit uint8) error {
		if seen&bit != 0 {
			return errNotLean // libvirtxml would merge repeated elements
		}
		seen |= bit
		return nil
	}
	for {
		t, ok, err := x.next(root.name)
		if err != nil || !ok {
			return f, err
		}
		var dst *string
		switch localName(t.name) {
		case "name":
			dst, err = &f.name, once(1)
		case "description":
			dst, err = &f.description, once(2)
		case "state":
			dst, err = &f.state, once(4)
		case "creationTime":
			dst, err = &f.creationTime, once(8)
		case "parent":
			if err := once(16); err != nil {
				return f, err
			}
			if err := x.parent(t, &f.parent); err != nil {
				return f, err
			}
			continue
		case "memory":
			if err := once(32); err != nil {
				return f, err
			}
			attrs, err := t.attrs("snapshot")
			if err != nil {
				return f, err
			}
			f.memory = attrs[0]
			if err := x.skip(t); err != nil {
				return f, err
			}
			continue
		case "disks":
			if err := once(64); err != nil {
				return f, err
			}
			if err := x.disks(t, &f.disks); err != nil {
				return f, err
			}
			continue
		case "active":
			return f, errNotLean // libvirtxml parses it as a number and may fail
		default: // domain, inactiveDomain, cookie, anything unknown
			if err := x.skip(t); err != nil {
				return f, err
			}
			continue
		}
		if err != nil {
			return f, err
		}
		if *dst, err = x.text(t); err != nil {
			return f, err
		}
	}
}

func (x *xmlScan) parent(t xmlTag, dst *string) error {
	if t.empty {
		return nil
	}
	seen := false
	for {
		c, ok, err := x.next(t.name)
		if err != nil || !ok {
			return err
		}
		if localName(c.name) != "name" {
			if err := x.skip(c); err != nil {
				return err
			}
			continue
		}
		if seen {
			return errNotLean
		}
		seen = true
		if *dst, err = x.text(c); err != nil {
			return err
		}
	}
}

func (x *xmlScan) disks(t xmlTag, dst *[]driver.SnapshotDisk) error {
	if t.empty {
		return nil
	}
	for {
		c, ok, err := x.next(t.name)
		if err != nil || !ok {
			return err
		}
		if localName(c.name) != "disk" {
			if err := x.skip(c); err != nil {
				return err
			}
			continue
		}
		a, err := c.attrs("name", "snapshot", "type")
		if err != nil {
			return err
		}
		sd := driver.SnapshotDisk{Name: a[0], Snapshot: a[1]}
		var fileSource bool
		switch a[2] {
		case "", "file":
			fileSource = true
		case "block", "network", "dir", "volume":
		default:
			return errNotLean
		}
		if !c.empty {
			seenSource := false
			for {
				e, ok, err := x.next(c.name)
				if err != nil {
					return err
				}
				if !ok {
					break
				}
				if localName(e.name) == "source" {
					if seenSource {
						return errNotLean
					}
					seenSource = true
					sa, err := e.attrs("file", "index")
					if err != nil {
						return err
					}
					if sa[1] != "" {
						return errNotLean // a number libvirtxml parses
					}
					if fileSource {
						sd.File = sa[0]
					}
				}
				if err := x.skip(e); err != nil {
					return err
				}
			}
		}
		*dst = append(*dst, sd)
	}
}

// xmlScan is a forward-only scanner over the XML subset libvirt writes.
type xmlScan struct {
	s string
	i int
}

// xmlTag is a start tag: its name as written, the raw text of its attributes, and
// whether it closes itself.
type xmlTag struct {
	name, attr string
	empty      bool
}

func localName(n string) string {
	// As encoding/xml splits a name: an empty prefix or local part keeps it whole.
	if space, local, ok := strings.Cut(n, ":"); ok && space != "" && local != "" {
		return local
	}
	return n
}

func (x *xmlScan) syntax(what string) error {
	return fmt.Errorf("snapshot XML: %s at offset %d", what, x.i)
}

// prolog skips what precedes the root element and returns the root's start tag.
func (x *xmlScan) prolog() (xmlTag, error) {
	for {
		j := strings.IndexByte(x.s[x.i:], '<')
		if j < 0 {
			return xmlTag{}, errNotLean
		}
		if strings.TrimLeft(x.s[x.i:x.i+j], " \t\r\n") != "" {
			return xmlTag{}, errNotLean
		}
		x.i += j
		switch {
		case strings.HasPrefix(x.s[x.i:], "<?"):
			if err := x.skipPast("?>"); err != nil {
				return xmlTag{}, err
			}
		case strings.HasPrefix(x.s[x.i:], "<!--"):
			if err := x.skipPast("-->"); err != nil {
				return xmlTag{}, err
			}
		case strings.HasPrefix(x.s[x.i:], "<!"), strings.HasPrefix(x.s[x.i:], "</"):
			return xmlTag{}, errNotLean
		default:
			return x.startTag()
		}
	}
}

func (x *xmlScan) skipPast(end string) error {
	j := strings.Index(x.s[x.i:], end)
	if j < 0 {
		return x.syntax("unterminated " + end)
	}
	x.i += j + len(end)
	return nil
}

// startTag reads the start tag at x.i ('<' not yet consumed).
func (x *xmlScan) startTag() (xmlTag, error) {
	s := x.s
	i := x.i + 1
	n := i
	for n < len(s) {
		if c := s[n]; isSpace(c) || c == '>' || c == '/' {
			break
		}
		n++
	}
	if n == i {
		return xmlTag{}, x.syntax("element without a name")
	}
	a := n
	for {
		if a >= len(s) {
			return xmlTag{}, x.syntax("unterminated start tag")
		}
		c := s[a]
		if c == '>' {
			break
		}
		if c == '"' || c == '\'' {
			k := strings.IndexByte(s[a+1:], c)
			if k < 0 {
				return xmlTag{}, x.syntax("unterminated attribute value")
			}
			if strings.IndexByte(s[a+1:a+1+k], '<') >= 0 {
				return xmlTag{}, x.syntax("unescaped < in an attribute value")
			}
			a += k + 2
			continue
		}
		a++
	}
	t := xmlTag{name: s[i:n], attr: s[n:a]}
	if a > n && s[a-1] == '/' {
		t.empty = true
		t.attr = t.attr[:len(t.attr)-1]
	}
	x.i = a + 1
	return t, nil
}

// markup classifies the markup at x.i (a '<'): an end tag, a start tag, or something
// to pass over (comment, CDATA section, processing instruction), which it skips.
func (x *xmlScan) markup() (kind byte, err error) {
	if x.i+1 >= len(x.s) {
		return 0, x.syntax("unterminated markup")
	}
	switch x.s[x.i+1] {
	case '/':
		return '/', nil
	case '?':
		return '!', x.skipPast("?>")
	case '!':
		rest := x.s[x.i:]
		switch {
		case strings.HasPrefix(rest, "<!--"):
			return '!', x.skipPast("-->")
		case strings.HasPrefix(rest, "<![CDATA["):
			return '!', x.skipPast("]]>")
		}
		return 0, errNotLean
	}
	return '<', nil
}

// next returns the next child element of the element named parent; ok is false after
// parent's end tag. Character data between children is ignored, as libvirtxml does.
func (x *xmlScan) next(parent string) (t xmlTag, ok bool, err error) {
	for {
		j := strings.IndexByte(x.s[x.i:], '<')
		if j < 0 {
			return t, false, x.syntax("unterminated <" + parent + ">")
		}
		x.i += j
		switch k, err := x.markup(); {
		case err != nil:
			return t, false, err
		case k == '/':
			return t, false, x.endTag(parent)
		case k == '<':
			t, err = x.startTag()
			return t, err == nil, err
		}
	}
}

// endTag consumes the end tag at x.i, which must close name.
func (x *xmlScan) endTag(name string) error {
	rest := x.s[x.i+2:]
	j := strings.IndexByte(rest, '>')
	if j < 0 {
		return x.syntax("unterminated end tag")
	}
	if strings.TrimRight(rest[:j], " \t\r\n") != name {
		return x.syntax(fmt.Sprintf("</%s> closes <%s>", rest[:j], name))
	}
	x.i += 2 + j + 1
	return nil
}

// skip passes over the element whose start tag t was just read, content and all.
func (x *xmlScan) skip(t xmlTag) error {
	if t.empty {
		return nil
	}
	depth := 1
	for {
		j := strings.IndexByte(x.s[x.i:], '<')
		if j < 0 {
			return x.syntax("unterminated <" + t.name + ">")
		}
		x.i += j
		switch k, err := x.markup(); {
		case err != nil:
			return err
		case k == '/':
			depth--
			if depth == 0 {
				return x.endTag(t.name)
			}
			if err := x.skipPast(">"); err != nil {
				return err
			}
		case k == '<':
			c, err := x.startTag()
			if err != nil {
				return err
			}
			if !c.empty {
				depth++
			}
		}
	}
}

// text reads the character data of the element whose start tag t was just read, up
// to its end tag. Markup inside is left to libvirtxml.
func (x *xmlScan) text(t xmlTag) (string, error) {
	if t.empty {
		return "", nil
	}
	j := strings.IndexByte(x.s[x.i:], '<')
	if j < 0 {
		return "", x.syntax("unterminated <" + t.name + ">")
	}
	raw := x.s[x.i : x.i+j]
	x.i += j
	if !strings.HasPrefix(x.s[x.i:], "</") {
		return "", errNotLean
	}
	if err := x.endTag(t.name); err != nil {
		return "", err
	}
	return unescape(raw)
}

// attrs returns the values of the named attributes (at most 3; "" for absent ones),
// matching local names as libvirtxml does.
func (t xmlTag) attrs(names ...string) ([3]string, error) {
	var out [3]string
	var found [3]bool
	a := t.attr
	for {
		a = strings.TrimLeft(a, " \t\r\n")
		if a == "" {
			return out, nil
		}
		eq := strings.IndexByte(a, '=')
		if eq <= 0 {
			return out, errNotLean
		}
		name := strings.TrimRight(a[:eq], " \t\r\n")
		if strings.ContainsAny(name, " \t\r\n\"'") {
			return out, errNotLean
		}
		a = strings.TrimLeft(a[eq+1:], " \t\r\n")
		if a == "" || (a[0] != '"' && a[0] != '\'') {
			return out, errNotLean
		}
		end := strings.IndexByte(a[1:], a[0])
		if end < 0 {
			return out, errNotLean
		}
		val := a[1 : 1+end]
		a = a[end+2:]
		if a != "" && !isSpace(a[0]) {
			return out, errNotLean
		}
		ln := localName(name)
		for k, n := range names {
			if ln != n {
				continue
			}
			if found[k] {
				return out, errNotLean
			}
			found[k] = true
			v, err := unescape(val)
			if err != nil {
				return out, err
			}
			out[k] = v
		}
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// unescape decodes character data as encoding/xml does: the five predefined entities
// and character references, CR LF and lone CR read as LF. Anything else is left to
// libvirtxml.
func unescape(raw string) (string, error) {
	if !utf8.ValidString(raw) {
		return "", errNotLean
	}
	plain := true
	for k := 0; k < len(raw); k++ {
		switch c := raw[k]; {
		case c == '&' || c == '\r':
			plain = false
		case c < 0x20 && c != '\t' && c != '\n':
			return "", errNotLean
		case c == 0xEF && (strings.HasPrefix(raw[k:], "\uFFFE") || strings.HasPrefix(raw[k:], "\uFFFF")):
			return "", errNotLean
		}
	}
	if plain {
		return raw, nil
	}
	var b strings.Builder
	b.Grow(len(raw))
	for k := 0; k < len(raw); k++ {
		switch c := raw[k]; c {
		case '\r':
			b.WriteByte('\n')
			if k+1 < len(raw) && raw[k+1] == '\n' {
				k++
			}
		case '&':
			end := strings.IndexByte(raw[k:], ';')
			if end < 0 {
				return "", errNotLean
			}
			ent := raw[k+1 : k+end]
			k += end
			switch ent {
			case "lt":
				b.WriteByte('<')
			case "gt":
				b.WriteByte('>')
			case "amp":
				b.WriteByte('&')
			case "apos":
				b.WriteByte('\'')
			case "quot":
				b.WriteByte('"')
			default:
				r, ok := charRef(ent)
				if !ok {
					return "", errNotLean
				}
				b.WriteRune(r)
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// charRef decodes "#123" or "#x7B" to a character XML allows.
func charRef(ent string) (rune, bool) {
	var digits string
	base := 10
	switch {
	case strings.HasPrefix(ent, "#x"):
		digits, base = ent[2:], 16
	case strings.HasPrefix(ent, "#"):
		digits = ent[1:]
	default:
		return 0, false
	}
	if digits == "" || len(digits) > 8 {
		return 0, false
	}
	for _, c := range []byte(digits) {
		if !(c >= '0' && c <= '9' || base == 16 && (c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F')) {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(digits, base, 32)
	if err != nil {
		return 0, false
	}
	r := rune(n)
	ok := r == 0x09 || r == 0x0A || r == 0x0D ||
		r >= 0x20 && r <= 0xD7FF || r >= 0xE000 && r <= 0xFFFD || r >= 0x10000 && r <= 0x10FFFF
	return r, ok
}
