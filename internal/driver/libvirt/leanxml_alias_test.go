package libvirt

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unsafe"
)

// TestDecodeKeepsNoPartOfTheDocument: the tap decodes each answer in its read buffer
// and then reuses it, so nothing decodeSnapshot returns may point into the document:
// overwriting the document afterwards changes nothing in the result.
func TestDecodeKeepsNoPartOfTheDocument(t *testing.T) {
	docs := map[string]string{"crafted": `<domainsnapshot>
  <name>autob260101020000</name>
  <description>autosnap
consistency: crash</description>
  <state>disk-snapshot</state>
  <creationTime>1767232800</creationTime>
  <parent><name>autob260101010000</name></parent>
  <memory snapshot='no'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'><driver type='qcow2'/><source file='/var/lib/x/vda.autob260101020000.qcow2'/></disk>
    <disk name='vdb' snapshot='no'/>
  </disks>
  <domain type='qemu'><name>g</name></domain>
</domainsnapshot>
`}
	files, _ := filepath.Glob("testdata/snapxml/*.xml")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs[f] = string(b)
	}
	for name, doc := range docs {
		want, werr := decodeSnapshot(strings.Clone(doc))
		buf := []byte(doc)
		got, gerr := decodeSnapshot(unsafe.String(unsafe.SliceData(buf), len(buf)))
		for i := range buf {
			buf[i] = '#'
		}
		if (werr == nil) != (gerr == nil) || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: after the document was overwritten the result reads\n%+v (%v)\nwant\n%+v (%v)", name, got, gerr, want, werr)
		}
	}
}
