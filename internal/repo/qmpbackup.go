package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// This file reads a qmpbackup target directory (github.com/abbbi/qmpbackup) as a
// read-only repository, so its chains can be listed and restored like autosnap's.
//
// What qmpbackup writes (all versions read here):
//
//	TARGET/uuid                          the chain's uuid (bitmap qmpbackup-<uuid>)
//	TARGET/<disk>.config                 qemu-img info of the source disk (ignored)
//	TARGET/<diskdir>/FULL-<epoch>-<disk> a full copy of the disk
//	TARGET/<diskdir>/INC-<epoch>-<disk>  the clusters changed since the previous point
//	TARGET/<diskdir>/COPY-<epoch>-<disk> a standalone copy outside the chain
//	…/<name>.partial                     a backup not finished (renamed when done)
//
// <diskdir> is the disk's file name (since the "unique bitmaps" rework), its node
// name (v0.46) or its device name (up to v0.45); files were named FULL-<epoch> and
// INC-<epoch> without the disk's name before v0.2x. --no-subdir puts the files in
// TARGET itself, --monthly puts each chain in TARGET/YYYY-MM/ with its own uuid, and
// --no-timestamp names a full after the disk with a FULL-<disk> symlink to it.
// qmpbackup has no DIFF level. An INC is a qcow2 image holding only the clusters
// dirty since the previous point and, as qmpbackup writes it, no backing file;
// `qmprestore rebase` later sets each INC's backing file to its predecessor in
// place. Neither matters here: a restore names every image of the chain and its
// order explicitly (a json: backing spec, images opened read-only), so the user's
// files are never changed and a stale backing-file header is ignored.
//
// A directory holding several such targets (one per VM) reads as one guest per
// target; a target alone is one guest named after its directory.

// QmpbackupFormat is the format name a qmpbackup target lists as.
const QmpbackupFormat = "qmpbackup"

// Layout is what kind of backups a directory holds.
type Layout int

const (
	// LayoutNone: neither an autosnap repository nor qmpbackup backups.
	LayoutNone Layout = iota
	// LayoutAutosnap: an autosnap repository (autosnap-repo.json).
	LayoutAutosnap
	// LayoutQmpbackup: one qmpbackup target, monthly targets, or a directory of targets.
	LayoutQmpbackup
)

// ErrMixedLayout is wrapped when a directory holds an autosnap repository and
// qmpbackup backups at once.
var ErrMixedLayout = errors.New("mixed backup directory")

// Qmpbackup point states.
const (
	QmpbackupComplete   = "complete"
	QmpbackupIncomplete = "incomplete" // a .partial file: qmpbackup did not finish it
	QmpbackupBroken     = "broken"     // depends on an incomplete or missing point
)

var (
	qbFileRe  = regexp.MustCompile(`^(FULL|INC|COPY)-(.+?)(\.partial)?$`)
	qbStampRe = regexp.MustCompile(`^([0-9]{9,})(?:-(.+))?$`)
	monthRe   = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}$`)
	imgExtRe  = regexp.MustCompile(`(?i)\.(qcow2|qcow|img|raw)$`)
)

// qbName is a parsed qmpbackup file name.
type qbName struct {
	level   string // full, inc, copy
	stamp   int64  // epoch seconds, 0 when the name has none (--no-timestamp)
	disk    string // the disk's name in the file name, "" for old names
	partial bool
}

func parseQmpbackupName(name string) (qbName, bool) {
	m := qbFileRe.FindStringSubmatch(name)
	if m == nil {
		return qbName{}, false
	}
	n := qbName{level: strings.ToLower(m[1]), partial: m[3] != ""}
	if s := qbStampRe.FindStringSubmatch(m[2]); s != nil {
		ts, err := strconv.ParseInt(s[1], 10, 64)
		if err != nil {
			return qbName{}, false
		}
		n.stamp, n.disk = ts, s[2]
	} else {
		n.disk = m[2]
	}
	return n, true
}

// DetectLayout says what dir holds. A directory holding both an autosnap repository
// and qmpbackup backups is refused (ErrMixedLayout): restoring from it would be
// ambiguous and a prune could not tell whose files it removes.
func DetectLayout(dir string) (Layout, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return LayoutNone, fmt.Errorf("backup directory %s: %w", dir, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return LayoutNone, fmt.Errorf("backup directory %s: %w", abs, err)
	}
	if !st.IsDir() {
		return LayoutNone, fmt.Errorf("backup directory %s is not a directory: point --target at one", abs)
	}
	_, err = os.Stat(filepath.Join(abs, RepoFile))
	autosnap := err == nil
	qb, err := qmpbackupTargets(abs)
	if err != nil {
		return LayoutNone, err
	}
	switch {
	case autosnap && len(qb) > 0:
		return LayoutNone, fmt.Errorf("%w: %s holds an autosnap repository (%s) and qmpbackup backups (%s): keep them in separate directories and point --target at one",
			ErrMixedLayout, abs, RepoFile, qb[0])
	case autosnap:
		return LayoutAutosnap, nil
	case len(qb) > 0:
		return LayoutQmpbackup, nil
	}
	return LayoutNone, nil
}

// NeitherError is the error for a directory DetectLayout found neither layout in.
func NeitherError(dir string) error {
	abs, _ := filepath.Abs(dir)
	return fmt.Errorf("%w: %s is neither an autosnap repository (no %s) nor a qmpbackup target (no uuid file, no FULL-*/INC-* backups in it or its subdirectories): check --target",
		ErrNotRepo, abs, RepoFile)
}

// isChainDir reports whether d is one qmpbackup chain directory: it has the uuid
// file qmpbackup writes with every full, or backup files directly in it
// (--no-subdir) or in its disk subdirectories.
func isChainDir(d string) bool {
	if st, err := os.Stat(filepath.Join(d, "uuid")); err == nil && st.Mode().IsRegular() {
		return true
	}
	ents, err := os.ReadDir(d)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if _, ok := parseQmpbackupName(e.Name()); ok && !e.IsDir() {
			return true
		}
	}
	for _, e := range ents {
		if !e.IsDir() || monthRe.MatchString(e.Name()) {
			continue
		}
		sub, err := os.ReadDir(filepath.Join(d, e.Name()))
		if err != nil {
			continue
		}
		for _, s := range sub {
			if s.Name() == "uuid" || s.IsDir() {
				// A subdirectory with its own uuid or subdirectories is a target of
				// its own, not a disk directory.
				return false
			}
		}
		for _, s := range sub {
			if _, ok := parseQmpbackupName(s.Name()); ok {
				return true
			}
		}
	}
	return false
}

// targetChainDirs returns the chain directories of the target d: d itself and its
// YYYY-MM subdirectories (--monthly) that are chain directories, oldest first.
func targetChainDirs(d string) []string {
	var out []string
	if isChainDir(d) {
		out = append(out, d)
	}
	ents, _ := os.ReadDir(d)
	for _, e := range ents {
		if e.IsDir() && monthRe.MatchString(e.Name()) && isChainDir(filepath.Join(d, e.Name())) {
			out = append(out, filepath.Join(d, e.Name()))
		}
	}
	return out
}

// qmpbackupTargets returns the qmpbackup targets in abs: abs itself when it is one,
// else its subdirectories that are.
func qmpbackupTargets(abs string) ([]string, error) {
	if len(targetChainDirs(abs)) > 0 {
		return []string{abs}, nil
	}
	ents, err := os.ReadDir(abs)
	if err != nil {
		return nil, fmt.Errorf("backup directory %s: %w", abs, err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		sub := filepath.Join(abs, e.Name())
		if len(targetChainDirs(sub)) > 0 {
			out = append(out, sub)
		}
	}
	return out, nil
}

// QmpbackupTarget is a directory of qmpbackup backups opened for reading.
type QmpbackupTarget struct {
	// Dir is the directory's absolute path.
	Dir    string
	Guests []*QmpbackupGuest
}

// QmpbackupGuest is one qmpbackup target: one VM's backups.
type QmpbackupGuest struct {
	// ID names the guest: Name is the target directory's name, UUID the uuid file's
	// content (of the newest chain), Driver "qmpbackup".
	ID GuestID
	// Dir is the target directory (absolute).
	Dir    string
	points []QmpbackupPoint
}

// QmpbackupPoint is one qmpbackup run mapped onto the repository's point model.
// Point.Dir is the chain directory (the target or its YYYY-MM subdirectory) and each
// DiskManifest.File is relative to it; Consistency is "crash" (qmpbackup records
// neither its --quiesce nor its --pause). Checksum is empty: qmpbackup keeps none.
type QmpbackupPoint struct {
	Point
	// State is QmpbackupComplete, QmpbackupIncomplete or QmpbackupBroken; Reason
	// says why a point is not complete.
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// chain maps each disk to the images a restore reads, oldest (the FULL or COPY)
	// first, this point's image last.
	chain map[string][]string
}

// Restorable reports whether the point can be restored.
func (p QmpbackupPoint) Restorable() bool { return p.State == QmpbackupComplete }

// Images returns the images (absolute paths) a restore of disk reads, oldest first.
func (p QmpbackupPoint) Images(disk string) []string { return append([]string(nil), p.chain[disk]...) }

// OpenQmpbackup reads the qmpbackup target(s) in dir. It changes nothing.
func OpenQmpbackup(ctx context.Context, dir string) (*QmpbackupTarget, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("qmpbackup target %s: %w", dir, err)
	}
	targets, err := qmpbackupTargets(abs)
	if err != nil {
		return nil, err
	}
	if len(targets) == 0 {
		return nil, NeitherError(abs)
	}
	t := &QmpbackupTarget{Dir: abs}
	for _, d := range targets {
		g, err := readQmpbackupGuest(ctx, d)
		if err != nil {
			return nil, err
		}
		t.Guests = append(t.Guests, g)
	}
	return t, nil
}

// Find returns the guest whose name or UUID is sel; exactly one must match.
func (t *QmpbackupTarget) Find(sel string) (*QmpbackupGuest, error) {
	var match []*QmpbackupGuest
	var names []string
	for _, g := range t.Guests {
		names = append(names, g.ID.Name)
		if g.ID.Name == sel || (g.ID.UUID != "" && strings.EqualFold(g.ID.UUID, sel)) {
			match = append(match, g)
		}
	}
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		return nil, fmt.Errorf("the qmpbackup directory %s has no target %q (it has: %s); --vmid names a target by its directory name or its uuid", t.Dir, sel, strings.Join(names, ", "))
	}
	return nil, fmt.Errorf("the qmpbackup directory %s has %d targets matching %q: give the directory name", t.Dir, len(match), sel)
}

// qbFile is one backup image found in a chain directory.
type qbFile struct {
	qbName
	path  string // absolute
	rel   string // relative to the chain directory
	dkey  string // the disk it belongs to
	mtime time.Time
}

func readQmpbackupGuest(ctx context.Context, target string) (*QmpbackupGuest, error) {
	g := &QmpbackupGuest{Dir: target, ID: GuestID{Name: filepath.Base(target), Driver: QmpbackupFormat}}
	seen := map[string]int{}
	for _, cd := range targetChainDirs(target) {
		if b, err := os.ReadFile(filepath.Join(cd, "uuid")); err == nil {
			g.ID.UUID = strings.TrimSpace(string(b))
		}
		files, err := chainDirFiles(cd)
		if err != nil {
			return nil, fmt.Errorf("qmpbackup target %s: %w", target, err)
		}
		ps, err := chainPoints(ctx, g.ID, cd, files, seen)
		if err != nil {
			return nil, fmt.Errorf("qmpbackup target %s: %w", target, err)
		}
		g.points = append(g.points, ps...)
	}
	sort.SliceStable(g.points, func(i, j int) bool {
		if !g.points[i].Started.Equal(g.points[j].Started) {
			return g.points[i].Started.Before(g.points[j].Started)
		}
		return g.points[i].ID < g.points[j].ID
	})
	return g, nil
}

// chainDirFiles lists the backup images of the chain directory cd: those in its disk
// subdirectories and, for --no-subdir, those in cd itself (the disk then is the name
// after the stamp).
func chainDirFiles(cd string) ([]qbFile, error) {
	ents, err := os.ReadDir(cd)
	if err != nil {
		return nil, err
	}
	var out []qbFile
	add := func(dir, rel, name, dkey string) error {
		n, ok := parseQmpbackupName(name)
		if !ok {
			return nil
		}
		p := filepath.Join(dir, name)
		st, err := os.Stat(p) // follows the FULL-<disk> symlink of --no-timestamp
		if err != nil {
			return err
		}
		if !st.Mode().IsRegular() {
			return nil
		}
		if dkey == "" {
			dkey = n.disk
		}
		if dkey == "" {
			return nil
		}
		if n.stamp == 0 {
			n.stamp = st.ModTime().Unix()
		}
		out = append(out, qbFile{qbName: n, path: p, rel: filepath.Join(rel, name), dkey: dkey, mtime: st.ModTime()})
		return nil
	}
	for _, e := range ents {
		if e.IsDir() {
			if monthRe.MatchString(e.Name()) || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			sub := filepath.Join(cd, e.Name())
			ss, err := os.ReadDir(sub)
			if err != nil {
				return nil, err
			}
			for _, s := range ss {
				if err := add(sub, e.Name(), s.Name(), e.Name()); err != nil {
					return nil, err
				}
			}
			continue
		}
		if err := add(cd, "", e.Name(), ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// diskName maps a qmpbackup disk directory (or file) name to a disk name: its image
// extension dropped, characters a point's disk name cannot hold replaced by '_'.
func diskName(key string) string {
	s := imgExtRe.ReplaceAllString(key, "")
	if s == "" {
		s = key
	}
	var b strings.Builder
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i > 0 && (c == '.' || c == '_' || c == '-') {
			ok = true
		}
		if ok {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

var qbLevelOrder = map[string]int{LevelFull: 0, LevelInc: 1, LevelCopy: 2}

// chainPoints groups the files of one chain directory into points (one per run: the
// same level and stamp on every disk) and works out each point's chain.
func chainPoints(ctx context.Context, gid GuestID, cd string, files []qbFile, seen map[string]int) ([]QmpbackupPoint, error) {
	type key struct {
		level string
		stamp int64
	}
	groups := map[key][]qbFile{}
	var keys []key
	for _, f := range files {
		k := key{f.level, f.stamp}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], f)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].stamp != keys[j].stamp {
			return keys[i].stamp < keys[j].stamp
		}
		return qbLevelOrder[keys[i].level] < qbLevelOrder[keys[j].level]
	})
	names := map[string]string{} // disk key → disk name, unique
	used := map[string]bool{}
	dkeys := []string{}
	for _, f := range files {
		if _, ok := names[f.dkey]; !ok {
			dkeys = append(dkeys, f.dkey)
			names[f.dkey] = ""
		}
	}
	sort.Strings(dkeys)
	for _, k := range dkeys {
		n := diskName(k)
		for i := 2; used[n]; i++ {
			n = diskName(k) + "_" + strconv.Itoa(i)
		}
		used[n] = true
		names[k] = n
	}

	var out []QmpbackupPoint
	cur := map[string][]string{} // disk → images of the open chain
	curBad := map[string]string{}
	fullID, lastID := "", ""
	for _, k := range keys {
		fs := groups[k]
		sort.Slice(fs, func(i, j int) bool { return names[fs[i].dkey] < names[fs[j].dkey] })
		started := time.Unix(k.stamp, 0).UTC()
		id := NewID(started, k.level)
		seen[id]++
		if n := seen[id]; n > 1 {
			id += "-" + strconv.Itoa(n)
		}
		p := QmpbackupPoint{State: QmpbackupComplete, chain: map[string][]string{}}
		p.Format, p.ID, p.Level, p.Guest, p.Started, p.Consistency, p.Dir = Format, id, k.level, gid, started, "crash", cd
		var partial []string
		for _, f := range fs {
			dn := names[f.dkey]
			info, err := headerInfo(ctx, f.path)
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", f.path, err)
			}
			size, err := fileSize(f.path)
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", f.path, err)
			}
			p.Disks = append(p.Disks, DiskManifest{Name: dn, File: f.rel, Format: info.Format, Backing: info.BackingFilename,
				VirtualSize: info.VirtualSize, Size: size})
			if f.mtime.After(p.Finished) {
				p.Finished = f.mtime
			}
			if f.partial {
				partial = append(partial, f.rel)
			}
			switch k.level {
			case LevelFull:
				cur[dn], curBad[dn] = []string{f.path}, ""
				p.chain[dn] = []string{f.path}
			case LevelCopy:
				p.chain[dn] = []string{f.path}
			case LevelInc:
				if len(cur[dn]) == 0 && curBad[dn] == "" {
					curBad[dn] = fmt.Sprintf("disk %s has no FULL before it in %s", dn, cd)
				}
				cur[dn] = append(cur[dn], f.path)
				p.chain[dn] = append([]string(nil), cur[dn]...)
				if curBad[dn] != "" && p.State == QmpbackupComplete {
					p.State, p.Reason = QmpbackupBroken, curBad[dn]
				}
			}
			if f.partial && k.level != LevelCopy {
				curBad[dn] = "it depends on the incomplete point " + id
			}
		}
		if len(partial) > 0 {
			p.State = QmpbackupIncomplete
			p.Reason = "qmpbackup did not finish it (" + strings.Join(partial, ", ") + ")"
		}
		switch k.level {
		case LevelFull:
			fullID, lastID = id, id
			p.Chain = id
		case LevelInc:
			p.Chain, p.Parent = fullID, lastID
			lastID = id
		}
		out = append(out, p)
	}
	return out, nil
}

// Points returns every point of the guest, oldest first, incomplete and broken ones
// included.
func (g *QmpbackupGuest) Points() []QmpbackupPoint { return append([]QmpbackupPoint(nil), g.points...) }

// Point returns the point id, or the point one of whose files is named id (as
// qmprestore's --until names them: INC-1700000000-vda.qcow2). ErrNoPoint when none.
func (g *QmpbackupGuest) Point(id string) (QmpbackupPoint, error) {
	for _, p := range g.points {
		if p.ID == id {
			return p, nil
		}
		for _, d := range p.Disks {
			if filepath.Base(d.File) == id {
				return p, nil
			}
		}
	}
	return QmpbackupPoint{}, fmt.Errorf("qmpbackup target %s: %w: %s (see backup list)", g.Dir, ErrNoPoint, id)
}

// Newest returns the newest restorable point (ErrNoPoint when none).
func (g *QmpbackupGuest) Newest() (QmpbackupPoint, error) {
	return g.Until(time.Unix(1<<62, 0))
}

// Until returns the newest restorable point taken at or before t (ErrNoPoint when
// none).
func (g *QmpbackupGuest) Until(t time.Time) (QmpbackupPoint, error) {
	for i := len(g.points) - 1; i >= 0; i-- {
		if g.points[i].Restorable() && !g.points[i].Started.After(t) {
			return g.points[i], nil
		}
	}
	return QmpbackupPoint{}, fmt.Errorf("qmpbackup target %s: %w: no complete point taken at or before %s", g.Dir, ErrNoPoint, t.Format(time.RFC3339))
}

// RestoreDisk writes disk of point p, read through its chain (the FULL, then each
// INC in order), to the image out in format ("qcow2" or "raw", "" meaning qcow2):
// thin and bit-identical to the disk at the point's instant, like Guest.RestoreDisk.
// The qmpbackup images are opened read-only and never changed. An incomplete or
// broken point is refused. out is written beside itself and renamed into place, so
// it is either untouched or complete; an existing block device is written in place
// (raw only).
func (g *QmpbackupGuest) RestoreDisk(ctx context.Context, p QmpbackupPoint, disk, out, format string) error {
	if format == "" {
		format = "qcow2"
	}
	if format != "qcow2" && format != "raw" {
		return fmt.Errorf("qmpbackup target %s: restore format %q: use qcow2 or raw", g.Dir, format)
	}
	if !p.Restorable() {
		return fmt.Errorf("qmpbackup target %s: point %s is %s: %s; restore an earlier point (see backup list)", g.Dir, p.ID, p.State, p.Reason)
	}
	d, ok := p.Disk(disk)
	if !ok {
		return fmt.Errorf("qmpbackup target %s: point %s has no disk %s (it has %s)", g.Dir, p.ID, disk, diskNames(p.Point))
	}
	chain := p.chain[disk]
	src, srcFmt, err := chainSpec(ctx, chain)
	if err != nil {
		return fmt.Errorf("qmpbackup target %s: disk %s of point %s: %w", g.Dir, disk, p.ID, err)
	}
	if st, err := os.Stat(out); err == nil && st.Mode()&os.ModeDevice != 0 {
		rg := &Guest{ID: g.ID, Dir: g.Dir}
		return rg.restoreToDevice(ctx, p.Point, disk, src, srcFmt, out, format, d.VirtualSize)
	}
	tmp := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".restoring")
	_ = os.Remove(tmp)
	fail := func(err error) error {
		_ = os.Remove(tmp)
		return fmt.Errorf("qmpbackup target %s: restoring disk %s of point %s to %s: %w", g.Dir, disk, p.ID, out, err)
	}
	if err := convertOut(ctx, src, srcFmt, tmp, format); err != nil {
		return fail(err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if err := syncFile(tmp); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return fail(err)
	}
	return syncDir(filepath.Dir(out))
}

// chainSpec is the image a restore reads and its format. For a qcow2 chain (oldest
// first) it is a json: name that opens the chain as one backing chain: each image's
// backing is the one before it, the oldest has none, whatever their headers say. A
// raw FULL or COPY (qmpbackup --include-raw) is read as it is. qmpbackup's raw INCs
// are refused: they mark unchanged blocks only by holes, and a block the guest zeroed
// may be stored as a hole too, so no reader can tell the two apart.
func chainSpec(ctx context.Context, chain []string) (string, string, error) {
	if len(chain) == 0 {
		return "", "", errors.New("no images")
	}
	var spec any // nil marshals as null: no backing
	for _, f := range chain {
		info, err := headerInfo(ctx, f)
		if err != nil {
			return "", "", err
		}
		if info.Format == "raw" && len(chain) == 1 {
			return f, "raw", nil
		}
		if info.Format != "qcow2" {
			return "", "", fmt.Errorf("%s is a %s image in a chain of %d: only qcow2 incs can be restored (qmpbackup's raw incs mark unchanged blocks by holes, which a zeroed block may also be); restore the raw FULL, or convert the chain by hand", f, info.Format, len(chain))
		}
		spec = map[string]any{"driver": "qcow2", "file": map[string]any{"driver": "file", "filename": f}, "backing": spec}
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return "", "", err
	}
	return "json:" + string(b), "qcow2", nil
}
