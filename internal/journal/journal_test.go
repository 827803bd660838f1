package journal

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

type rec struct {
	Op    string
	Steps []string
	Done  int
}

func TestPutGetDeleteKeys(t *testing.T) {
	s := Open(filepath.Join(t.TempDir(), "j"))
	var r rec
	if ok, err := s.Get("merge/h/u1", &r); ok || err != nil {
		t.Fatalf("empty store: ok=%v err=%v", ok, err)
	}
	want := rec{Op: "delete", Steps: []string{"a", "b"}, Done: 1}
	for _, k := range []string{"merge/h/u1", "merge/h/u2", "create/h/u1", "odd key/ü"} {
		if err := s.Put(k, want); err != nil {
			t.Fatal(err)
		}
	}
	want.Done = 2
	if err := s.Put("merge/h/u1", want); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Get("merge/h/u1", &r); !ok || err != nil || !reflect.DeepEqual(r, want) {
		t.Fatalf("get: ok=%v err=%v got %+v want %+v", ok, err, r, want)
	}
	keys, err := s.Keys("merge/")
	if err != nil || !reflect.DeepEqual(keys, []string{"merge/h/u1", "merge/h/u2"}) {
		t.Fatalf("keys: %v %v", keys, err)
	}
	if keys, _ := s.Keys("odd"); !reflect.DeepEqual(keys, []string{"odd key/ü"}) {
		t.Fatalf("escaped key round trip: %v", keys)
	}
	if err := s.Delete("merge/h/u1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("merge/h/u1"); err != nil {
		t.Fatalf("deleting twice: %v", err)
	}
	if ok, _ := s.Get("merge/h/u1", &r); ok {
		t.Fatal("record still there after Delete")
	}
	entries, _ := os.ReadDir(s.Dir)
	for _, e := range entries {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
	if fi, _ := os.Stat(s.Dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", fi.Mode().Perm())
	}
}

func TestUnreadableRecordIsAnError(t *testing.T) {
	s := Open(t.TempDir())
	if err := s.Put("k", rec{}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.fileName("k"), []byte("{torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	var r rec
	if ok, err := s.Get("k", &r); ok || err == nil {
		t.Fatalf("torn record: ok=%v err=%v, want an error", ok, err)
	}
}
