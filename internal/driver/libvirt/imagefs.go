package libvirt

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// fileID identifies a file independently of the path that reaches it: two paths
// through symlinks or bind mounts name the same image exactly when their device and
// inode numbers agree.
type fileID struct{ dev, ino uint64 }

func (id fileID) String() string { return fmt.Sprintf("%d:%d", id.dev, id.ino) }

// imageFS answers the questions the merge planner asks about image files on the
// libvirt host. The real one reads local files; tests use a fake.
type imageFS interface {
	// Stat returns the identity of the file path names (symlinks followed); exists is
	// false, with a nil error, when there is no such file.
	Stat(path string) (id fileID, exists bool, err error)
	// Backing returns the backing file named in the qcow2 header of the image at path,
	// resolved against the image's directory as QEMU does; "" when the image has none
	// or is not qcow2. A missing file is an error wrapping fs.ErrNotExist.
	Backing(path string) (string, error)
	// InternalSnapshots reports whether the qcow2 image at path holds internal
	// snapshots. A missing file is an error wrapping fs.ErrNotExist.
	InternalSnapshots(path string) (bool, error)
	// List returns the paths of the regular files in dir, sorted. A directory that
	// cannot be listed (a block device's /dev, no permission) lists nothing.
	List(dir string) ([]string, error)
}

// localFS is imageFS on this machine's file system.
type localFS struct{}

func (localFS) Stat(path string) (fileID, bool, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileID{}, false, nil
	}
	if err != nil {
		return fileID{}, false, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false, fmt.Errorf("%s: the file system reports no device and inode", path)
	}
	return fileID{dev: uint64(st.Dev), ino: uint64(st.Ino)}, true, nil
}

func (localFS) Backing(path string) (string, error) {
	b, ok, err := qcow2Backing(path)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("%s: %w", path, fs.ErrNotExist)
	}
	return b, nil
}

func (localFS) InternalSnapshots(path string) (bool, error) {
	if _, err := os.Stat(path); err != nil {
		return false, err
	}
	return hasInternalSnapshots(path)
}

func (localFS) List(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil
	}
	var out []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}

// imageFS returns the file system holding the guests' images, or nil when autosnap
// does not run on the libvirt host and only libvirt's view is available.
func (d *Driver) imageFS() imageFS {
	if !d.local {
		return nil
	}
	if d.graph.fs != nil {
		return d.graph.fs
	}
	return localFS{}
}

// isLocalPath reports whether a backing file name is a local path rather than a
// protocol or json: specification, which has no file to look at.
func isLocalPath(p string) bool { return filepath.IsAbs(p) }
