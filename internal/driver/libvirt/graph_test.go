package libvirt

import (
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"
)

// graphWorld is a guest on the fake file system: snapshots s1 (state base, overlay
// O1) and s2 (state O1, overlay O2, the active image), all in /img, which is also
// reachable as /lnk.
func graphWorld() (*fakeFS, map[string][]string) {
	fs := newFakeFS()
	fs.links["/lnk"] = "/img"
	fs.create("/img/base", "")
	fs.create("/img/O1", "/lnk/base")
	fs.create("/img/O2", "/img/O1")
	return fs, map[string][]string{"vda": {"/lnk/O2", "/img/O1", "/lnk/base"}}
}

// graphTree is the metadata of snapshots given as name, overlay, state triples.
func graphTree(snaps ...[3]string) *snapTree {
	t := &snapTree{byName: map[string]*snapMeta{}}
	for _, s := range snaps {
		x := &libvirtxml.DomainSnapshot{Name: s[0], Domain: &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{{Target: &libvirtxml.DomainDiskTarget{Dev: "vda"},
				Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: s[2]}}}},
		}}}
		t.byName[s[0]] = &snapMeta{x: x, overlays: map[string]string{"vda": s[1]}, states: map[string]string{"vda": s[2]}}
		t.order = append(t.order, s[0])
	}
	return t
}

// TestGraphIdentity: the chain, the metadata and the headers name the same files
// through different directories. The graph has one node per file, keyed by the
// chain's path, the metadata is rewritten to those keys, and deleting the newest
// snapshot merges its overlay into the file the metadata calls /lnk/O1.
func TestGraphIdentity(t *testing.T) {
	fs, chains := graphWorld()
	tree := graphTree([3]string{"s1", "/lnk/O1", "/lnk/base"}, [3]string{"s2", "/lnk/O2", "/lnk/O1"})
	in := graphInput{guest: "g", chains: chains, tree: tree, deleted: map[string]bool{"s2": true}, fs: fs}
	graphs, err := in.build()
	if err != nil {
		t.Fatal(err)
	}
	gr := graphs["vda"]
	if len(gr.nodes) != 3 {
		t.Errorf("nodes %v, want one per file", sortedKeys(gr.nodes))
	}
	if got := tree.byName["s2"].states["vda"]; got != "/img/O1" {
		t.Errorf("s2's state is %s, want the chain's name /img/O1", got)
	}
	if got := tree.byName["s2"].x.Domain.Devices.Disks[0].Source.File.File; got != "/img/O1" {
		t.Errorf("s2's recorded disk source is %s, want /img/O1", got)
	}
	if got, want := show(gr.plan()), "commit /lnk/O2>/img/O1[] above[] active=true"; got != want {
		t.Errorf("plan %s, want %s", got, want)
	}
}

// TestGraphMissingFiles: a missing file stops the planning with an error naming the
// guest, the disk, the file and what to do, except the overlay of a snapshot that no
// snapshot uses as its state (a revert discarded it).
func TestGraphMissingFiles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(fs *fakeFS, tree *snapTree)
		del   string
		want  []string // in the error; none: no error
	}{
		{name: "chain image", setup: func(fs *fakeFS, _ *snapTree) { fs.remove("/img/base") }, del: "s2",
			want: []string{"guest g", "disk vda", "/lnk/base", "does not exist", "snapshot chain g"}},
		{name: "kept snapshot's state", del: "s2", setup: func(fs *fakeFS, tree *snapTree) {
			fs.create("/img/B2", "")
			tree.byName["s1"].states["vda"] = "/img/gone"
		}, want: []string{"guest g", "disk vda", "snapshot s1", "/img/gone", "does not exist", "snapshot delete --metadata"}},
		{name: "deleted snapshot's state", del: "s1", setup: func(_ *fakeFS, tree *snapTree) {
			tree.byName["s1"].states["vda"] = "/img/gone"
		}, want: []string{"snapshot s1", "/img/gone", "does not exist"}},
		{name: "backing file of a branch", del: "s2", setup: func(fs *fakeFS, tree *snapTree) {
			fs.create("/img/B", "/img/gone")
			tree.byName["s3"] = &snapMeta{overlays: map[string]string{"vda": "/img/B"}, states: map[string]string{"vda": "/img/base"}}
			tree.order = append(tree.order, "s3")
		}, want: []string{"/img/B names /img/gone as its backing file", "does not exist"}},
		{name: "overlay discarded by a revert", del: "s3", setup: func(_ *fakeFS, tree *snapTree) {
			tree.byName["s3"] = &snapMeta{overlays: map[string]string{"vda": "/img/discarded"}, states: map[string]string{"vda": "/img/O2"}}
			tree.order = append(tree.order, "s3")
		}},
		{name: "overlay that is a state", del: "s1", setup: func(fs *fakeFS, tree *snapTree) {
			tree.byName["s1"].overlays["vda"] = "/img/gone"
			tree.byName["s2"].states["vda"] = "/img/gone"
		}, want: []string{"snapshot s1 names /img/gone as its overlay", "does not exist"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, chains := graphWorld()
			tree := graphTree([3]string{"s1", "/img/O1", "/img/base"}, [3]string{"s2", "/img/O2", "/img/O1"})
			tc.setup(fs, tree)
			in := graphInput{guest: "g", chains: chains, tree: tree, deleted: map[string]bool{tc.del: true}, fs: fs}
			graphs, err := in.build()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := graphs["vda"].nodes["/img/discarded"]; ok {
					t.Errorf("a missing file is in the graph")
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; plan %s", show(graphs["vda"].plan()))
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestGraphSharedUsers: another guest using the base makes deleting s1 (which merges
// O1 into the base) fail, naming the user; the guest's own disk and images of the
// graph that the scan reports do not count.
func TestGraphSharedUsers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		users func(fs *fakeFS, h *hostUsers)
		want  string
	}{
		{name: "another guest", want: "guest other disk vdb", users: func(_ *fakeFS, h *hostUsers) {
			h.add("/lnk/base", imageUser{what: "guest other disk vdb", uuid: "u-other", disk: "vdb"})
		}},
		{name: "the guest's other disk", want: "guest g disk vdb", users: func(_ *fakeFS, h *hostUsers) {
			h.add("/img/base", imageUser{what: "guest g disk vdb", uuid: "u-g", disk: "vdb"})
		}},
		{name: "a pool file outside the graph", want: "/pool/v (storage pool p)", users: func(fs *fakeFS, h *hostUsers) {
			fs.create("/pool/v", "/img/base")
			h.add("/img/base", imageUser{what: "/pool/v (storage pool p)", path: "/pool/v"})
		}},
		{name: "a file beside it", want: "the image /img/stray", users: func(fs *fakeFS, _ *hostUsers) {
			fs.create("/img/stray", "/lnk/base")
		}},
		{name: "the guest's own disk", users: func(_ *fakeFS, h *hostUsers) {
			for _, p := range []string{"/img/O2", "/img/O1", "/img/base"} {
				h.add(p, imageUser{what: "guest g disk vda", uuid: "u-g", disk: "vda"})
			}
		}},
		{name: "an image of the graph in a pool", users: func(_ *fakeFS, h *hostUsers) {
			h.add("/img/base", imageUser{what: "/lnk/O1 (storage pool images)", path: "/lnk/O1"})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, chains := graphWorld()
			h := newHostUsers()
			tc.users(fs, h)
			h = h.identified(fs)
			tree := graphTree([3]string{"s1", "/img/O1", "/img/base"}, [3]string{"s2", "/img/O2", "/img/O1"})
			in := graphInput{guest: "g", uuid: "u-g", chains: chains, tree: tree, deleted: map[string]bool{"s1": true}, fs: fs,
				users: func() (*hostUsers, error) { return h, nil }}
			graphs, err := in.build()
			if err != nil {
				t.Fatal(err)
			}
			err = in.refuseShared(graphs)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got, want := show(graphs["vda"].plan()), "commit /img/O1>/lnk/base[] above[/lnk/O2] active=false"; got != want {
					t.Errorf("plan %s, want %s", got, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("deleting s1 does not refuse; plan %s", show(graphs["vda"].plan()))
			}
			for _, w := range []string{tc.want, "guest g: disk vda: deleting snapshot s1", "/lnk/base", "nothing was changed", "--metadata"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if got := show(graphs["vda"].plan()); got != "" {
				t.Errorf("the planner itself would change the shared image: %s", got)
			}
		})
	}
}

// TestGraphForcedBases: --force-base names a bottom image by any path to it.
func TestGraphForcedBases(t *testing.T) {
	fs, _ := graphWorld()
	keys := newKeyer(fs)
	for _, p := range []string{"/img/O2", "/img/O1", "/lnk/base"} {
		if _, err := keys.key(p); err != nil {
			t.Fatal(err)
		}
	}
	got, err := forcedBases(keys, []string{"/img/base"}, []string{"/lnk/base"})
	if err != nil || !got["/lnk/base"] {
		t.Errorf("forcing /img/base: %v %v, want /lnk/base forced", got, err)
	}
	if _, err := forcedBases(keys, []string{"/img/O1"}, []string{"/lnk/base"}); err == nil || !strings.Contains(err.Error(), "not the bottom image") {
		t.Errorf("forcing an overlay: %v", err)
	}
	if _, err := forcedBases(keys, []string{"/img/nosuch"}, []string{"/lnk/base"}); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("forcing a missing file: %v", err)
	}
}

// TestHostUsersIdentifiedAtUse: a cached scan must not name an image as used because
// a file deleted since the scan passed its inode number on to it (merges delete
// overlays and creates make new ones, so inode numbers are reused within one run).
func TestHostUsersIdentifiedAtUse(t *testing.T) {
	fs := newFakeFS()
	other := fs.create("/other/ov.qcow2", "")
	h := newHostUsers()
	h.add("/other/ov.qcow2", imageUser{what: "guest other disk vda", uuid: "u-other", disk: "vda"})
	if us := h.identified(fs).byID[other.id]; len(us) != 1 {
		t.Fatalf("before: users of the other guest's image = %v, want one", us)
	}
	fs.remove("/other/ov.qcow2")
	mine := fs.create("/mine/new.qcow2", "")
	// The fake hands out fresh numbers; reuse the freed one as a real file system may.
	delete(fs.files, mine.id)
	mine.id = other.id
	fs.files[mine.id] = mine
	fs.names[mine.path] = mine.id
	if us := h.identified(fs).byID[mine.id]; len(us) != 0 {
		t.Fatalf("a new image that reuses a deleted file's inode is reported used by %v", us)
	}
}

// TestGraphRevertLeftovers: snapshots deleted while a revert had branched their state
// image leave no metadata saying the image is free. Once the last snapshot goes, the
// overlay autosnap created on it (found by its file name) is merged into it, so the
// chain is the base alone; an image autosnap did not create never makes the image
// below it writable, nor does one of another disk or guest.
func TestGraphRevertLeftovers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files [][2]string // path, backing; the last one is the active image
		tree  [][3]string // name, overlay, state
		del   string
		want  string
	}{{
		// The conformance suite's revert history: autorev1 deleted while base had
		// dom-vda.autorev1.qcow2 and the revert overlay on it, then autorev2 (whose
		// state dom-vda.autorev1.qcow2 was removed), then autorev3.
		name: "revert overlay on the base",
		files: [][2]string{{"/img/base", ""}, {"/img/dom-vda.autorev1.revert2.qcow2", "/img/base"},
			{"/img/dom-vda.autorev3.revert1.qcow2", "/img/dom-vda.autorev1.revert2.qcow2"}},
		tree: [][3]string{{"autorev3", "/img/dom-vda.autorev3.qcow2", "/img/dom-vda.autorev1.revert2.qcow2"}},
		del:  "autorev3",
		want: "commit /img/dom-vda.autorev3.revert1.qcow2>/img/base[/img/dom-vda.autorev1.revert2.qcow2] above[] active=true",
	}, {
		// s1 deleted while base had dom-vda.s1.qcow2 and a revert overlay; the revert
		// to s2 then discarded that revert overlay.
		name: "snapshot overlay of a deleted snapshot on the base",
		files: [][2]string{{"/img/base", ""}, {"/img/dom-vda.s1.qcow2", "/lnk/base"},
			{"/img/dom-vda.s2.revert1.qcow2", "/img/dom-vda.s1.qcow2"}},
		tree: [][3]string{{"s2", "/img/dom-vda.s2.revert1.qcow2", "/img/dom-vda.s1.qcow2"}},
		del:  "s2",
		want: "commit /img/dom-vda.s2.revert1.qcow2>/img/base[/img/dom-vda.s1.qcow2] above[] active=true",
	}, {
		name: "a kept snapshot's state below",
		files: [][2]string{{"/img/base", ""}, {"/img/dom-vda.s1.qcow2", "/img/base"},
			{"/img/dom-vda.s2.revert1.qcow2", "/img/dom-vda.s1.qcow2"}, {"/img/dom-vda.s3.qcow2", "/img/dom-vda.s2.revert1.qcow2"}},
		tree: [][3]string{{"s0", "/img/gone.qcow2", "/img/base"}, {"s3", "/img/dom-vda.s3.qcow2", "/img/dom-vda.s2.revert1.qcow2"}},
		del:  "s3",
		want: "commit /img/dom-vda.s3.qcow2>/img/dom-vda.s1.qcow2[/img/dom-vda.s2.revert1.qcow2] above[] active=true",
	}, {
		name:  "an image autosnap did not create",
		files: [][2]string{{"/tpl/T", ""}, {"/img/base", "/tpl/T"}, {"/img/mine.qcow2", "/img/base"}, {"/img/dom-vda.s1.qcow2", "/img/mine.qcow2"}},
		tree:  [][3]string{{"s1", "/img/dom-vda.s1.qcow2", "/img/mine.qcow2"}},
		del:   "s1",
		want:  "commit /img/dom-vda.s1.qcow2>/img/mine.qcow2[] above[] active=true",
	}, {
		name:  "another disk's or guest's names",
		files: [][2]string{{"/img/base", ""}, {"/img/dom-vdb.s1.qcow2", "/img/base"}, {"/img/other-vda.s1.qcow2", "/img/dom-vdb.s1.qcow2"}, {"/img/dom-vda.s2.qcow2", "/img/other-vda.s1.qcow2"}},
		tree:  [][3]string{{"s2", "/img/dom-vda.s2.qcow2", "/img/other-vda.s1.qcow2"}},
		del:   "s2",
		want:  "commit /img/dom-vda.s2.qcow2>/img/other-vda.s1.qcow2[] above[] active=true",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFakeFS()
			fs.links["/lnk"] = "/img"
			var chain []string
			for _, f := range tc.files {
				fs.create(f[0], f[1])
				chain = append([]string{f[0]}, chain...)
			}
			in := graphInput{guest: "dom", domain: "dom", chains: map[string][]string{"vda": chain}, tree: graphTree(tc.tree...),
				deleted: map[string]bool{tc.del: true}, fs: fs}
			graphs, err := in.build()
			if err != nil {
				t.Fatal(err)
			}
			if got := show(graphs["vda"].plan()); got != tc.want {
				t.Errorf("plan %s\nwant %s", got, tc.want)
			}
		})
	}
}
