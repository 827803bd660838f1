package repo

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Levels a point can have (the names of driver.BackupLevel).
const (
	LevelFull = "full"
	LevelInc  = "inc"
	LevelDiff = "diff"
	LevelCopy = "copy"
)

// Manifest describes one backup point; it is manifest.json in the point's directory
// (Config is config.xml beside it).
type Manifest struct {
	Format int `json:"format"`
	// ID is the point's directory name, sortable by time: 20261130T061500Z-inc.
	ID    string `json:"id"`
	Level string `json:"level"`
	// Chain is the ID of the chain's full ("" for a copy). When a prune removes the
	// full, the chain's oldest remaining point, whose images the prune made
	// standalone, becomes its full: its Level is set to full (Merged says what it
	// was) and every remaining point of the chain takes its ID as Chain. An inc
	// stacks on the chain's newest point, a diff on its full.
	Chain string `json:"chain,omitempty"`
	// Parent is the point this one's disks are backed by ("" for a full, a copy, or a
	// point whose ancestors were all pruned: its files then stand alone).
	Parent string `json:"parent,omitempty"`
	// Checkpoint is the hypervisor checkpoint created with this point ("" for a copy).
	Checkpoint string  `json:"checkpoint,omitempty"`
	Guest      GuestID `json:"guest"`
	// Started is the instant the data was captured; Finished when the copy ended.
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Consistency says how the data was captured, in driver.Consistency's words:
	// "quiesced" (filesystems frozen through the guest agent), "crash" (not frozen),
	// "offline" (guest shut off). Manifests of earlier versions saying "application"
	// read as "quiesced".
	Consistency string `json:"consistency"`
	// Merged, set by a prune on the point that became its chain's full, says what
	// the point was taken as and why it is a full now.
	Merged          string         `json:"merged,omitempty"`
	Config          []byte         `json:"-"`
	AutosnapVersion string         `json:"autosnap_version,omitempty"`
	Disks           []DiskManifest `json:"disks"`
}

// DiskManifest describes one disk of a point.
type DiskManifest struct {
	// Name is the guest's name for the disk (vda, scsi0).
	Name string `json:"name"`
	// File is the image's name inside the point directory: <Name>.qcow2.
	File   string `json:"file"`
	Format string `json:"format"`
	// Backing is the backing file as written in File's header, relative to the point
	// directory (../<parentID>/<Name>.qcow2), or "" when File stands alone.
	Backing string `json:"backing,omitempty"`
	// Checksum is "xxh3-128:<hex>" of the whole file as stored.
	Checksum string `json:"checksum"`
	// FullReason says why this disk was copied whole in an inc or diff point (new
	// disk, resized, raw, bitmap lost…).
	FullReason string `json:"full_reason,omitempty"`
	// VirtualSize is the disk's size as the guest sees it; Size the bytes File
	// occupies on the repository's storage.
	VirtualSize uint64 `json:"virtual_size"`
	Size        uint64 `json:"size"`
}

// Point is a complete backup point.
type Point struct {
	Manifest
	// Dir is the point's directory (absolute).
	Dir string `json:"dir"`
}

// Disk returns the point's disk named name.
func (p Point) Disk(name string) (DiskManifest, bool) {
	for _, d := range p.Disks {
		if d.Name == name {
			return d, true
		}
	}
	return DiskManifest{}, false
}

// Path is the absolute path of the point's image of disk d.
func (p Point) Path(d DiskManifest) string { return filepath.Join(p.Dir, d.File) }

// Size is the bytes the point's files occupy.
func (p Point) Size() uint64 {
	var n uint64
	for _, d := range p.Disks {
		n += d.Size
	}
	return n
}

// VirtualSize is the sum of the point's disks' virtual sizes.
func (p Point) VirtualSize() uint64 {
	var n uint64
	for _, d := range p.Disks {
		n += d.VirtualSize
	}
	return n
}

var (
	idRe   = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-(full|inc|diff|copy)(-[0-9]+)?$`)
	diskRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
)

// ValidID reports whether id has the form of a point ID.
func ValidID(id string) bool { return idRe.MatchString(id) }

// NewID is the point ID of a point of level taken at t: t in UTC to the second, then
// the level.
func NewID(t time.Time, level string) string {
	return t.UTC().Format("20060102T150405Z") + "-" + level
}

// backingPoint is the point ID a relative backing name ../<id>/<file> refers to.
func backingPoint(backing string) (string, bool) {
	if backing == "" {
		return "", false
	}
	parts := strings.Split(path.Clean(filepath.ToSlash(backing)), "/")
	if len(parts) != 3 || parts[0] != ".." || !ValidID(parts[1]) {
		return "", false
	}
	return parts[1], true
}

func backingName(pointID, file string) string { return "../" + pointID + "/" + file }

// legacyQuiesced is what manifests written before the vocabulary was unified call a
// quiesced point.
const legacyQuiesced = "application"

// readPoint reads the point in dir.
func readPoint(dir string) (Point, error) {
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return Point{}, fmt.Errorf("backup point %s: %w", dir, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Point{}, fmt.Errorf("backup point %s: unreadable %s: %w", dir, ManifestFile, err)
	}
	if m.Format != Format {
		return Point{}, fmt.Errorf("backup point %s: manifest format %d, this autosnap reads %d", dir, m.Format, Format)
	}
	if m.ID != filepath.Base(dir) {
		return Point{}, fmt.Errorf("backup point %s: its manifest names point %q; the directory was renamed or the manifest copied from elsewhere", dir, m.ID)
	}
	cfg, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return Point{}, fmt.Errorf("backup point %s: %w", dir, err)
	}
	m.Config = cfg
	if m.Consistency == legacyQuiesced {
		m.Consistency = "quiesced"
	}
	return Point{Manifest: m, Dir: dir}, nil
}

// Points lists the guest's complete points, oldest first (by Started, then ID).
// Directories being written (.partial-*) or removed (.removing-*) are not points.
func (g *Guest) Points() ([]Point, error) {
	ents, err := os.ReadDir(g.Dir)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", g.ID.Name, err)
	}
	var out []Point
	for _, e := range ents {
		if !e.IsDir() || !ValidID(e.Name()) {
			continue
		}
		p, err := readPoint(filepath.Join(g.Dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("guest %s: %w", g.ID.Name, err)
		}
		out = append(out, p)
	}
	sortPoints(out)
	return out, nil
}

func sortPoints(ps []Point) {
	sort.SliceStable(ps, func(i, j int) bool {
		if !ps[i].Started.Equal(ps[j].Started) {
			return ps[i].Started.Before(ps[j].Started)
		}
		return ps[i].ID < ps[j].ID
	})
}

// Point returns the complete point id (ErrNoPoint when there is none).
func (g *Guest) Point(id string) (Point, error) {
	if !ValidID(id) {
		return Point{}, fmt.Errorf("guest %s: %w: %q is no point ID (they look like 20261130T061500Z-inc)", g.ID.Name, ErrNoPoint, id)
	}
	p, err := readPoint(filepath.Join(g.Dir, id))
	if errors.Is(err, os.ErrNotExist) {
		return Point{}, fmt.Errorf("guest %s: %w: %s (see backup list)", g.ID.Name, ErrNoPoint, id)
	}
	return p, err
}

// Until returns the newest point taken at or before t (ErrNoPoint when none).
func (g *Guest) Until(t time.Time) (Point, error) {
	ps, err := g.Points()
	if err != nil {
		return Point{}, err
	}
	for i := len(ps) - 1; i >= 0; i-- {
		if !ps[i].Started.After(t) {
			return ps[i], nil
		}
	}
	return Point{}, fmt.Errorf("guest %s: %w taken at or before %s", g.ID.Name, ErrNoPoint, t.Format(time.RFC3339))
}

// Chain returns the points of chain (the ID of its full), oldest first.
func (g *Guest) Chain(chain string) ([]Point, error) {
	ps, err := g.Points()
	if err != nil {
		return nil, err
	}
	var out []Point
	for _, p := range ps {
		if chain != "" && p.Chain == chain {
			out = append(out, p)
		}
	}
	return out, nil
}

// Newest returns the newest point of the guest that belongs to a chain (not a copy),
// ok false when there is none: an inc stacks on it, a diff on the first point of its
// chain.
func (g *Guest) Newest() (p Point, ok bool, err error) {
	ps, err := g.Points()
	if err != nil {
		return Point{}, false, err
	}
	for i := len(ps) - 1; i >= 0; i-- {
		if ps[i].Level != LevelCopy {
			return ps[i], true, nil
		}
	}
	return Point{}, false, nil
}

// ChainRoot returns the first point of chain still in the repository: its full.
// ok is false when the chain has no point left.
func (g *Guest) ChainRoot(chain string) (p Point, ok bool, err error) {
	ps, err := g.Chain(chain)
	if err != nil || len(ps) == 0 {
		return Point{}, false, err
	}
	return ps[0], true, nil
}
