package libvirt

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
)

// fakeFS is an imageFS in memory for the planner's tests. Each image is a map of
// block to value on top of its backing file, so a test can read what any image shows
// and simulate what each merge step does to the files. Directories can be reached
// through symlinks (links), so one file has several paths.
type fakeFS struct {
	files   map[fileID]*fakeFile
	names   map[string]fileID // real path -> file
	links   map[string]string // directory reached through a symlink -> real directory
	nextIno uint64
}

type fakeFile struct {
	id       fileID
	path     string // real path
	backing  string // as written in the header: absolute, maybe through a link
	data     map[int]int
	internal bool
}

func newFakeFS() *fakeFS {
	return &fakeFS{files: map[fileID]*fakeFile{}, names: map[string]fileID{}, links: map[string]string{}}
}

// clone returns a deep copy.
func (f *fakeFS) clone() *fakeFS {
	c := &fakeFS{files: map[fileID]*fakeFile{}, names: map[string]fileID{}, links: map[string]string{}, nextIno: f.nextIno}
	for id, ff := range f.files {
		cf := *ff
		cf.data = map[int]int{}
		for k, v := range ff.data {
			cf.data[k] = v
		}
		c.files[id] = &cf
	}
	for k, v := range f.names {
		c.names[k] = v
	}
	for k, v := range f.links {
		c.links[k] = v
	}
	return c
}

// real resolves a path's directory through the links.
func (f *fakeFS) real(p string) string {
	dir, base := filepath.Split(p)
	dir = filepath.Clean(dir)
	if r, ok := f.links[dir]; ok {
		dir = r
	}
	return filepath.Join(dir, base)
}

func (f *fakeFS) file(p string) *fakeFile {
	id, ok := f.names[f.real(p)]
	if !ok {
		return nil
	}
	return f.files[id]
}

// create makes an image at path (its directory real, not a link) on backing.
func (f *fakeFS) create(path, backing string) *fakeFile {
	if f.file(path) != nil {
		panic("fakeFS: " + path + " exists")
	}
	f.nextIno++
	ff := &fakeFile{id: fileID{dev: 1, ino: f.nextIno}, path: f.real(path), backing: backing, data: map[int]int{}}
	f.files[ff.id] = ff
	f.names[ff.path] = ff.id
	return ff
}

func (f *fakeFS) remove(path string) {
	ff := f.file(path)
	if ff == nil {
		panic("fakeFS: removing missing " + path)
	}
	delete(f.files, ff.id)
	delete(f.names, ff.path)
}

// read returns the value of block b as the image at path shows it.
func (f *fakeFS) read(path string, b int) (int, error) {
	for i := 0; path != ""; i++ {
		ff := f.file(path)
		if ff == nil {
			return 0, fmt.Errorf("%s: missing", path)
		}
		if i > 1000 {
			return 0, fmt.Errorf("%s: backing loop", path)
		}
		if v, ok := ff.data[b]; ok {
			return v, nil
		}
		path = ff.backing
	}
	return 0, nil
}

// view returns what the image at path shows in blocks 0..n-1.
func (f *fakeFS) view(path string, n int) ([]int, error) {
	out := make([]int, n)
	for b := range out {
		v, err := f.read(path, b)
		if err != nil {
			return nil, err
		}
		out[b] = v
	}
	return out, nil
}

// same reports whether two paths name one file.
func (f *fakeFS) same(a, b string) bool {
	fa, fb := f.file(a), f.file(b)
	return fa != nil && fa == fb
}

func (f *fakeFS) Stat(path string) (fileID, bool, error) {
	ff := f.file(path)
	if ff == nil {
		return fileID{}, false, nil
	}
	return ff.id, true, nil
}

func (f *fakeFS) Backing(path string) (string, error) {
	ff := f.file(path)
	if ff == nil {
		return "", fmt.Errorf("%s: %w", path, fs.ErrNotExist)
	}
	return ff.backing, nil
}

func (f *fakeFS) InternalSnapshots(path string) (bool, error) {
	ff := f.file(path)
	if ff == nil {
		return false, fmt.Errorf("%s: %w", path, fs.ErrNotExist)
	}
	return ff.internal, nil
}

func (f *fakeFS) List(dir string) ([]string, error) {
	dir = filepath.Clean(dir)
	realDir := dir
	if r, ok := f.links[dir]; ok {
		realDir = r
	}
	var out []string
	for p := range f.names {
		if filepath.Dir(p) == realDir {
			out = append(out, filepath.Join(dir, filepath.Base(p)))
		}
	}
	sort.Strings(out)
	return out, nil
}

// dump describes the files for a failure message.
func (f *fakeFS) dump() string {
	var lines []string
	for p, id := range f.names {
		ff := f.files[id]
		lines = append(lines, fmt.Sprintf("  %s (ino %d) <- %q internal=%v data=%v", p, id.ino, ff.backing, ff.internal, ff.data))
	}
	sort.Strings(lines)
	var ls []string
	for l, r := range f.links {
		ls = append(ls, l+" -> "+r)
	}
	sort.Strings(ls)
	return "links: " + strings.Join(ls, ", ") + "\n" + strings.Join(lines, "\n")
}
