// Package repo is autosnap's backup repository: a directory of plain qcow2 backing
// chains with one JSON manifest per backup point, readable with qemu-img alone (see
// docs/backup-format.md). It is the only package that writes into a repository.
//
// Layout:
//
//	DIR/autosnap-repo.json                  {"format":1,"id":...}
//	DIR/.lock                               repository lock (creating guest dirs)
//	DIR/<name>-<uuid8>/guest.json           the guest's identity
//	DIR/<name>-<uuid8>/.lock                the guest's writer lock (backup, prune, repair)
//	DIR/<name>-<uuid8>/.lock-readers        readers (shared) against prunes (exclusive)
//	DIR/<name>-<uuid8>/.journal/            records of prunes in progress
//	DIR/<name>-<uuid8>/<pointID>/           one complete point: manifest.json,
//	                                        config.xml, <disk>.qcow2
//	DIR/<name>-<uuid8>/.partial-<pointID>/  a point being written
//	DIR/<name>-<uuid8>/.removing-<pointID>/ a pruned point being deleted
//
// Several hosts may share one DIR (an NFS export): every change to a guest directory
// happens under its lock (flock, which Linux's NFS client maps to NFS byte-range
// locks), and guest directories are created under the repository lock.
// Files are created 0600 and directories 0700.
package repo

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Format is the repository and manifest format this package writes and reads.
const Format = 1

// File and directory names inside a repository.
const (
	RepoFile = "autosnap-repo.json"
	LockFile = ".lock"
	// ReadersLockFile is shared by readers and taken exclusively by prunes.
	ReadersLockFile = ".lock-readers"
	GuestFile       = "guest.json"
	ManifestFile    = "manifest.json"
	ConfigFile      = "config.xml"
	JournalDir      = ".journal"
	PartialPfx      = ".partial-"
	RemovingPfx     = ".removing-"
)

// ErrNotRepo is wrapped when a directory holds files but is no autosnap repository.
var ErrNotRepo = errors.New("not an autosnap backup repository")

// ErrNoPoint is wrapped when a point asked for does not exist.
var ErrNoPoint = errors.New("no such backup point")

// Repo is an open repository.
type Repo struct {
	// Dir is the repository's absolute path.
	Dir string
	// ID is the repository's random identity, from autosnap-repo.json.
	ID string
}

// repoHeader is autosnap-repo.json.
type repoHeader struct {
	Format int    `json:"format"`
	ID     string `json:"id"`
}

// Open opens the repository in dir, creating dir (0700) and its autosnap-repo.json
// when dir is missing or empty. A non-empty dir without autosnap-repo.json is
// refused (ErrNotRepo), so a typo cannot scatter backups into an unrelated directory.
func Open(dir string) (*Repo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("backup repository %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("backup repository %s: creating it: %w", abs, err)
	}
	r := &Repo{Dir: abs}
	hdr, err := r.readHeader()
	if err == nil {
		r.ID = hdr.ID
		return r, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	unlock, err := lockPath(context.Background(), filepath.Join(abs, LockFile), true)
	if err != nil {
		return nil, fmt.Errorf("backup repository %s: %w", abs, err)
	}
	defer unlock()
	if hdr, err := r.readHeader(); err == nil {
		r.ID = hdr.ID
		return r, nil
	}
	ents, err := os.ReadDir(abs)
	if err != nil {
		return nil, fmt.Errorf("backup repository %s: %w", abs, err)
	}
	for _, e := range ents {
		if e.Name() != LockFile {
			return nil, fmt.Errorf("%w: %s holds %s but no %s; point --target at an empty or existing repository directory", ErrNotRepo, abs, e.Name(), RepoFile)
		}
	}
	// A new repository is private even in a directory that existed with wider modes.
	if err := os.Chmod(abs, 0o700); err != nil {
		return nil, fmt.Errorf("backup repository %s: %w", abs, err)
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	r.ID = hex.EncodeToString(b[:])
	if err := writeJSONAtomic(filepath.Join(abs, RepoFile), repoHeader{Format: Format, ID: r.ID}); err != nil {
		return nil, fmt.Errorf("backup repository %s: %w", abs, err)
	}
	return r, nil
}

// OpenExisting opens the repository in dir and fails (wrapping ErrNotRepo) when dir
// holds none; for commands that only read or prune a repository.
func OpenExisting(dir string) (*Repo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("backup repository %s: %w", dir, err)
	}
	r := &Repo{Dir: abs}
	hdr, err := r.readHeader()
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s has no %s (check --target)", ErrNotRepo, abs, RepoFile)
	}
	if err != nil {
		return nil, err
	}
	r.ID = hdr.ID
	return r, nil
}

func (r *Repo) readHeader() (repoHeader, error) {
	var h repoHeader
	data, err := os.ReadFile(filepath.Join(r.Dir, RepoFile))
	if err != nil {
		return h, fmt.Errorf("backup repository %s: %w", r.Dir, err)
	}
	if err := json.Unmarshal(data, &h); err != nil {
		return h, fmt.Errorf("backup repository %s: unreadable %s: %w", r.Dir, RepoFile, err)
	}
	if h.Format != Format {
		return h, fmt.Errorf("backup repository %s has format %d; this autosnap reads format %d: use a matching autosnap version", r.Dir, h.Format, Format)
	}
	return h, nil
}

// Lock takes the repository lock (exclusive), waiting until ctx ends.
func (r *Repo) Lock(ctx context.Context) (unlock func(), err error) {
	return lockPath(ctx, filepath.Join(r.Dir, LockFile), true)
}

// GuestID is a guest's identity in the repository. UUID is the stable key: a guest
// renamed or moved to another node keeps its directory.
type GuestID struct {
	UUID string `json:"uuid"`
	Name string `json:"name"`
	// ID is the numeric id where the hypervisor has one (the Proxmox VE vmid), so
	// --vmid 100 selects the guest's backups too; 0 when none.
	ID     int    `json:"id,omitempty"`
	Node   string `json:"node,omitempty"`
	Driver string `json:"driver,omitempty"`
}

// Guests lists the guest directories of the repository, sorted by directory name.
func (r *Repo) Guests() ([]*Guest, error) {
	ents, err := os.ReadDir(r.Dir)
	if err != nil {
		return nil, fmt.Errorf("backup repository %s: %w", r.Dir, err)
	}
	var out []*Guest
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(r.Dir, e.Name())
		var id GuestID
		data, err := os.ReadFile(filepath.Join(dir, GuestFile))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("backup repository %s: %w", r.Dir, err)
		}
		if err := json.Unmarshal(data, &id); err != nil {
			return nil, fmt.Errorf("backup repository %s: unreadable %s: %w", r.Dir, filepath.Join(dir, GuestFile), err)
		}
		out = append(out, &Guest{repo: r, ID: id, Dir: dir})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dir < out[j].Dir })
	return out, nil
}

// Guest returns the guest directory of id.UUID, creating it (under the repository
// lock) when the repository has none. When the guest's name, node or driver changed,
// guest.json is updated; the directory keeps its first name.
func (r *Repo) Guest(id GuestID) (*Guest, error) {
	if id.UUID == "" {
		return nil, fmt.Errorf("backup repository %s: guest %q has no UUID; a repository keys guests by UUID", r.Dir, id.Name)
	}
	find := func() (*Guest, error) {
		gs, err := r.Guests()
		if err != nil {
			return nil, err
		}
		for _, g := range gs {
			if strings.EqualFold(g.ID.UUID, id.UUID) {
				return g, nil
			}
		}
		return nil, nil
	}
	g, err := find()
	if err != nil {
		return nil, err
	}
	if g == nil {
		unlock, err := r.Lock(context.Background())
		if err != nil {
			return nil, err
		}
		defer unlock()
		if g, err = find(); err != nil {
			return nil, err
		}
	}
	if g == nil {
		g, err = r.createGuest(id)
		if err != nil {
			return nil, err
		}
		return g, nil
	}
	if g.ID != id {
		g.ID = id
		if err := writeJSONAtomic(filepath.Join(g.Dir, GuestFile), id); err != nil {
			return nil, fmt.Errorf("guest %s: updating its identity: %w", id.Name, err)
		}
	}
	return g, nil
}

func (r *Repo) createGuest(id GuestID) (*Guest, error) {
	u := strings.ToLower(strings.ReplaceAll(id.UUID, "-", ""))
	if strings.Trim(u, "0123456789abcdef") != "" {
		// A key that is no UUID (node/name of a guest without one) would put slashes
		// in the name: its hash names the directory instead.
		sum := sha256.Sum256([]byte(id.UUID))
		u = hex.EncodeToString(sum[:])
	}
	base := safeName(id.Name)
	for n := 8; ; n++ {
		suffix := u
		if n < len(u) {
			suffix = u[:n]
		}
		dir := filepath.Join(r.Dir, base+"-"+suffix)
		err := os.Mkdir(dir, 0o700)
		if errors.Is(err, os.ErrExist) {
			if n >= len(u) {
				return nil, fmt.Errorf("guest %s: %s already exists for another guest", id.Name, dir)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("guest %s: creating %s: %w", id.Name, dir, err)
		}
		if err := writeJSONAtomic(filepath.Join(dir, GuestFile), id); err != nil {
			return nil, fmt.Errorf("guest %s: %w", id.Name, err)
		}
		if err := syncDir(r.Dir); err != nil {
			return nil, err
		}
		return &Guest{repo: r, ID: id, Dir: dir}, nil
	}
}

// safeName maps a guest name to a directory name: letters, digits, '.', '_' and '-'
// are kept, anything else becomes '_'.
func safeName(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
			b.WriteRune(c)
		default:
			b.WriteByte('_')
		}
	}
	n := strings.TrimLeft(b.String(), ".")
	if n == "" {
		n = "guest"
	}
	return n
}

// Guest is one guest's directory.
type Guest struct {
	repo *Repo
	ID   GuestID
	// Dir is the directory's absolute path.
	Dir string
}

// Repo is the repository the guest belongs to.
func (g *Guest) Repo() *Repo { return g.repo }

// Lock takes the guest's writer lock, waiting until ctx ends. Hold it around
// Begin…Commit, Repair and Prune: it excludes other writers (backups, prunes,
// repairs) in other processes, on other hosts sharing the repository, and in this
// process. Readers (RLock) are not blocked by a backup in progress; Prune and Repair
// also take the readers' lock exclusively while they change existing points.
func (g *Guest) Lock(ctx context.Context) (unlock func(), err error) {
	unlock, err = lockPath(ctx, filepath.Join(g.Dir, LockFile), true)
	if err != nil {
		return nil, fmt.Errorf("guest %s: locking %s: %w", g.ID.Name, g.Dir, err)
	}
	return unlock, nil
}

// RLock takes the guest's readers' lock shared, for readers (list, verify, restore)
// that must not see a prune change or remove files under them. A backup in progress
// does not block it: a point appears complete or not at all.
func (g *Guest) RLock(ctx context.Context) (unlock func(), err error) {
	unlock, err = lockPath(ctx, filepath.Join(g.Dir, ReadersLockFile), false)
	if err != nil {
		return nil, fmt.Errorf("guest %s: readers' lock of %s (a prune holds it while it runs): %w", g.ID.Name, g.Dir, err)
	}
	return unlock, nil
}

// lockReaders takes the readers' lock exclusively, for the steps of Prune and Repair
// that change or remove complete points.
func (g *Guest) lockReaders(ctx context.Context) (unlock func(), err error) {
	unlock, err = lockPath(ctx, filepath.Join(g.Dir, ReadersLockFile), true)
	if err != nil {
		return nil, fmt.Errorf("guest %s: waiting for readers (verify, restore) to finish: %w", g.ID.Name, err)
	}
	return unlock, nil
}

// FindGuest finds a live guest's directory among gs: by UUID when the guest has one,
// else by node and numeric id, else by name. Nil when none matches.
func FindGuest(gs []*Guest, uuid string, id int, node, name string) *Guest {
	for _, rg := range gs {
		if uuid != "" && strings.EqualFold(rg.ID.UUID, uuid) {
			return rg
		}
	}
	if uuid != "" {
		return nil
	}
	for _, rg := range gs {
		if id > 0 && rg.ID.ID == id && rg.ID.Node == node {
			return rg
		}
	}
	for _, rg := range gs {
		if rg.ID.Name == name {
			return rg
		}
	}
	return nil
}
