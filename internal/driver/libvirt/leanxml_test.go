package libvirt

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
)

// reference is what the listing gave before the lean decoder: libvirtxml + fromXML.
func reference(raw string) (driver.Snapshot, error) {
	var x libvirtxml.DomainSnapshot
	if err := x.Unmarshal(raw); err != nil {
		return driver.Snapshot{}, err
	}
	return fromXML(&x), nil
}

func goldenDocs(t testing.TB) map[string]string {
	files, err := filepath.Glob("testdata/snapxml/*.xml")
	if err != nil || len(files) < 8 {
		t.Fatalf("golden snapshot XML: %v files, %v (regenerate with testdata/snapxml/capture.sh)", len(files), err)
	}
	out := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = string(b)
	}
	return out
}

// TestLeanDecoderGolden: on snapshot XML captured from libvirt 9.0 (external
// disk-only, external with memory, internal offline and with memory, offline
// external, mixed, a disk left out, odd characters) the lean decoder takes its fast
// path and yields exactly what libvirtxml + fromXML did.
func TestLeanDecoderGolden(t *testing.T) {
	kinds := map[driver.Location]bool{}
	for name, raw := range goldenDocs(t) {
		want, err := reference(raw)
		if err != nil {
			t.Fatalf("%s: libvirtxml: %v", name, err)
		}
		f, err := leanSnapshot(raw)
		if err != nil {
			t.Errorf("%s: lean decoder fell back: %v", name, err)
			continue
		}
		if got := f.snapshot(); !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", name, got, want)
		}
		kinds[want.Location] = true
		if want.Name == "" || want.Created.IsZero() {
			t.Errorf("%s: golden file lacks a name or time: %+v", name, want)
		}
	}
	if len(kinds) != 3 {
		t.Errorf("golden files cover locations %v, want internal, external and mixed", kinds)
	}
}

const edgeBase = `<domainsnapshot>
  <name>s1</name>
  <description>autosnap
consistency: crash</description>
  <state>disk-snapshot</state>
  <parent><name>s0</name></parent>
  <creationTime>1767229200</creationTime>
  <memory snapshot='no'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'>
      <driver type='qcow2'/>
      <source file='/img/a.s1'/>
    </disk>
  </disks>
  <domain type='qemu'><name>g</name><devices><disk type='file'><source file='/img/a'/></disk></devices></domain>
</domainsnapshot>`

// edgeCases vary edgeBase in ways libvirt does not write but XML allows; each must
// decode as libvirtxml does (through the fallback where the lean subset ends).
func edgeCases() map[string]string {
	r := func(old, new string) string { return strings.Replace(edgeBase, old, new, 1) }
	return map[string]string{
		"declaration":       `<?xml version="1.0" encoding="UTF-8"?>` + "\n<!-- c -->\n" + edgeBase,
		"doctype":           "<!DOCTYPE domainsnapshot>\n" + edgeBase,
		"cdata":             r("autosnap\n", "<![CDATA[autosnap <&>]]>\n"),
		"comment in text":   r("autosnap\n", "auto<!-- x -->snap\n"),
		"comment at top":    r("<state>", "<!-- <name>x</name> --><state>"),
		"pi at top":         r("<state>", "<?pi x?><state>"),
		"cr":                r("autosnap\n", "autosnap\r\n\r"),
		"char refs":         r("autosnap\n", "a&#13;&#x41;&#65;&#x1F600;&lt;&gt;&amp;&apos;&quot;\n"),
		"bad char ref":      r("autosnap\n", "&#1;\n"),
		"surrogate ref":     r("autosnap\n", "&#xD800;\n"),
		"upper X ref":       r("autosnap\n", "&#X41;\n"),
		"unknown entity":    r("autosnap\n", "&nbsp;\n"),
		"bare amp":          r("autosnap\n", "a & b\n"),
		"control char":      r("autosnap\n", "a\x01b\n"),
		"bad utf8":          r("autosnap\n", "a\xffb\n"),
		"fffe":              r("autosnap\n", "a\uFFFEb\n"),
		"prefixed":          r("<name>s1</name>", `<x:name xmlns:x="urn:x">s1</x:name>`),
		"prefixed attr":     r("snapshot='external' type", `x:snapshot='internal' type`),
		"duplicate name":    r("<state>", "<name>s2</name><state>"),
		"duplicate attr":    r("snapshot='no'", "snapshot='no' snapshot='internal'"),
		"duplicate source":  r("<source file='/img/a.s1'/>", "<source file='/img/a.s1'/><source file='/img/b'/>"),
		"duplicate disks":   r("</disks>", "</disks><disks><disk name='vdb' snapshot='internal'/></disks>"),
		"duplicate parent":  r("<creationTime>", "<parent><name>p2</name></parent><creationTime>"),
		"parent two names":  r("<name>s0</name>", "<name>s0</name><name>s00</name>"),
		"empty elements":    r("<name>s1</name>", "<name/>"),
		"self-closing root": "<domainsnapshot/>",
		"other root":        strings.ReplaceAll(edgeBase, "domainsnapshot", "domaincheckpoint"),
		"active":            r("<state>", "<active>1</active><state>"),
		"active bad":        r("<state>", "<active>x</active><state>"),
		"gt in attr":        r("file='/img/a.s1'", "file='/img/a>b\"c'"),
		"lt in attr":        r("file='/img/a.s1'", "file='/img/a<b'"),
		"entity in attr":    r("file='/img/a.s1'", "file='/img/a&amp;&#x20;b'"),
		"unquoted attr":     r("snapshot='no'", "snapshot=no"),
		"spaces in tags":    r("<memory snapshot='no'/>", "<memory\n snapshot = \"internal\" ></memory >"),
		"block disk":        r("type='file'>", "type='block'>"),
		"network disk":      r("type='file'>", "type='network'>"),
		"odd disk type":     r("type='file'>", "type='nvme'>"),
		"no disk type":      r(" type='file'>", ">"),
		"source index":      r("<source file='/img/a.s1'/>", "<source file='/img/a.s1' index='x'/>"),
		"nested in text":    r("autosnap\n", "auto<b>snap</b>\n"),
		"mismatched end":    r("</state>", "</stat>"),
		"truncated":         edgeBase[:len(edgeBase)/2],
		"trailing junk":     edgeBase + "<junk",
		"text before root":  "x" + edgeBase,
		"bom":               "\uFEFF" + edgeBase,
		"nested domain":     r("<devices>", "<metadata><domain><name>z</name></domain></metadata><devices>"),
		"cdata in domain":   r("<devices>", "<![CDATA[</domain><name>evil</name>]]><devices>"),
		"comment in domain": r("<devices>", "<!-- </domain><name>evil</name> --><devices>"),
		"attr > in domain":  r("<devices>", "<x a='/>' b=\"'>\"></x><y c='>'/><devices>"),
		"inactive domain":   r("</domainsnapshot>", "<inactiveDomain><name>g</name></inactiveDomain><cookie><x/></cookie></domainsnapshot>"),
		"unknown elements":  r("<state>", "<foo a='1'><name>evil</name></foo><state>"),
		"memory children":   r("<memory snapshot='no'/>", "<memory snapshot='external' file='/m'><x/></memory>"),
		"text at top":       r("<state>", "stray text &amp; more<state>"),
		"disk children":     r("<driver type='qcow2'/>", "<driver type='qcow2'><x/></driver><name>n</name>"),
		"disks other child": r("<disk name='vda'", "<foo/><disk name='vdz' snapshot='no'/><disk name='vda'"),
		"no creation time":  r("<creationTime>1767229200</creationTime>", ""),
		"bad creation time": r("1767229200", " 1767229200"),
		"mem internal":      r("snapshot='no'", "snapshot='internal'"),
	}
}

// mustBeFast are edge cases within the lean subset.
var mustBeFast = map[string]bool{
	"declaration": true, "comment at top": true, "pi at top": true, "cr": true, "char refs": true,
	"prefixed": true, "prefixed attr": true, "empty elements": true, "self-closing root": true,
	"gt in attr": true, "entity in attr": true, "spaces in tags": true, "block disk": true,
	"network disk": true, "no disk type": true, "nested domain": true, "cdata in domain": true,
	"comment in domain": true, "attr > in domain": true, "inactive domain": true,
	"unknown elements": true, "memory children": true, "text at top": true, "disk children": true,
	"disks other child": true, "no creation time": true, "bad creation time": true, "mem internal": true,
}

func TestLeanDecoderEdgeCases(t *testing.T) {
	fast := 0
	for name, raw := range edgeCases() {
		want, werr := reference(raw)
		got, gerr := decodeSnapshot(raw)
		if (werr != nil) != (gerr != nil) || !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v, %v\nwant %+v, %v", name, got, gerr, want, werr)
		}
		_, err := leanSnapshot(raw)
		if err == nil {
			fast++
		} else if mustBeFast[name] {
			t.Errorf("%s: fell back: %v", name, err)
		}
	}
	t.Logf("%d of %d edge cases on the fast path", fast, len(edgeCases()))
}

// FuzzDecodeSnapshot: whenever libvirtxml reads a document, the lean decoder (with
// its fallback) yields the same Snapshot.
func FuzzDecodeSnapshot(f *testing.F) {
	for _, raw := range goldenDocs(f) {
		f.Add(raw)
	}
	for _, raw := range edgeCases() {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		want, err := reference(raw)
		if err != nil {
			return
		}
		got, err := decodeSnapshot(raw)
		if err != nil {
			t.Fatalf("libvirtxml reads it, decodeSnapshot fails: %v", err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("\n got %+v\nwant %+v", got, want)
		}
	})
}

func BenchmarkDecodeSnapshot(b *testing.B) {
	raw := goldenDocs(b)["external-memory.xml"]
	b.Run("lean", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		for b.Loop() {
			if _, err := decodeSnapshot(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("libvirtxml", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		for b.Loop() {
			if _, err := reference(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}
