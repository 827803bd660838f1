// Package qcow2 creates and reads the headers of qcow2 images in-process, for the
// few things the backup path needs from an image and used to start qemu-img for:
// create an empty image (optionally with a backing file), read its header (format,
// virtual size, backing file), and count the data its top layer holds. Each call
// costs microseconds where a qemu-img process costs tens of milliseconds, which is
// most of an incremental backup's fixed overhead.
//
// Only the layout qemu-img itself writes by default is produced (version 3, 64 KiB
// clusters, 16-bit refcounts, no extended L2, no external data file, no
// encryption); readers refuse (ErrUnsupported) what they cannot interpret exactly so
// that callers fall back to qemu-img.
package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Magic opens every qcow2 file: "QFI\xfb".
const Magic = 0x514649fb

const (
	clusterBits   = 16
	clusterSize   = 1 << clusterBits
	headerLength  = 104
	extBackingFmt = 0xe2792aca
	l2EntryOffset = 0x00fffffffffffe00 // host cluster offset bits 9-55 of a standard L2 entry
	l2Compressed  = 1 << 62
	l2AllZero     = 1 << 0
	// incompatDirty and incompatCorrupt do not change how tables are read; every
	// other incompatible feature does (external data file, compression type, extended L2).
	incompatDirty   = 1 << 0
	incompatCorrupt = 1 << 1
)

// ErrUnsupported says the image uses a feature these readers do not interpret; the
// caller asks qemu-img instead.
var ErrUnsupported = errors.New("qcow2 feature not supported in-process")

// ErrNotQcow2 says the file does not start with the qcow2 magic.
var ErrNotQcow2 = errors.New("not a qcow2 image")

// Header is what the backup path reads from an image's header.
type Header struct {
	Version       uint32
	ClusterBits   uint32
	Size          uint64 // virtual size in bytes
	Backing       string // backing file name exactly as stored, "" for none
	BackingFormat string // from the backing-format header extension, "" when absent
	L1Size        uint32
	L1Offset      uint64
	Incompatible  uint64
}

// Create makes a new qcow2 image at path, mode 0600, of size bytes, with backing
// file backing (stored as given; relative names resolve against path's directory)
// of format backingFmt when backing is not "". It fails when path exists. The image
// is what `qemu-img create -f qcow2 [-b backing -F backingFmt] path size` writes:
// header, one refcount table cluster, one refcount block, the L1 table, every data
// cluster unallocated. It is not fsynced: callers sync the finished image.
func Create(path string, size uint64, backing, backingFmt string) error {
	if size == 0 || size%512 != 0 {
		return fmt.Errorf("creating %s: size %d is not a positive multiple of 512", path, size)
	}
	const l2Entries = clusterSize / 8
	l1Size := (size + clusterSize*l2Entries - 1) / (clusterSize * l2Entries)
	l1Clusters := (l1Size*8 + clusterSize - 1) / clusterSize
	if l1Clusters == 0 {
		l1Clusters = 1
	}
	const (
		rtOffset = 1 * clusterSize
		rbOffset = 2 * clusterSize
		l1Offset = 3 * clusterSize
	)
	total := 3 + l1Clusters // clusters in use; one refcount block covers 32768
	if total > clusterSize/2 {
		return fmt.Errorf("creating %s: %d bytes is too large for an in-process qcow2 header", path, size)
	}
	hdr := make([]byte, clusterSize)
	be := binary.BigEndian
	be.PutUint32(hdr[0:], Magic)
	be.PutUint32(hdr[4:], 3)
	be.PutUint32(hdr[20:], clusterBits)
	be.PutUint64(hdr[24:], size)
	be.PutUint32(hdr[36:], uint32(l1Size))
	be.PutUint64(hdr[40:], l1Offset)
	be.PutUint64(hdr[48:], rtOffset)
	be.PutUint32(hdr[56:], 1)
	be.PutUint32(hdr[96:], 4) // refcount_order: 16-bit refcounts
	be.PutUint32(hdr[100:], headerLength)
	off := headerLength
	if backing != "" {
		if backingFmt != "" {
			be.PutUint32(hdr[off:], extBackingFmt)
			be.PutUint32(hdr[off+4:], uint32(len(backingFmt)))
			copy(hdr[off+8:], backingFmt)
			off += 8 + (len(backingFmt)+7)/8*8
		}
		off += 8 // end of extensions: type 0, length 0
		if len(backing) > 1023 || off+len(backing) > clusterSize {
			return fmt.Errorf("creating %s: backing file name too long", path)
		}
		be.PutUint64(hdr[8:], uint64(off))
		be.PutUint32(hdr[16:], uint32(len(backing)))
		copy(hdr[off:], backing)
	}
	rt := make([]byte, clusterSize)
	be.PutUint64(rt[0:], rbOffset)
	rb := make([]byte, clusterSize)
	for i := uint64(0); i < total; i++ {
		be.PutUint16(rb[2*i:], 1)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	buf := append(append(append(hdr, rt...), rb...), make([]byte, l1Clusters*clusterSize)...)
	if _, err := f.Write(buf); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("creating %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("creating %s: %w", path, err)
	}
	return nil
}

// ReadHeader reads the header of the qcow2 image at path. ErrNotQcow2 when the
// magic is missing, ErrUnsupported for versions other than 2 and 3.
func ReadHeader(path string) (Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return Header{}, err
	}
	defer f.Close()
	return readHeader(f, path)
}

func readHeader(f *os.File, path string) (Header, error) {
	buf := make([]byte, clusterSize)
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		return Header{}, fmt.Errorf("reading %s: %w", path, err)
	}
	buf = buf[:n]
	be := binary.BigEndian
	if len(buf) < 72 || be.Uint32(buf) != Magic {
		return Header{}, fmt.Errorf("%s: %w", path, ErrNotQcow2)
	}
	h := Header{
		Version:     be.Uint32(buf[4:]),
		ClusterBits: be.Uint32(buf[20:]),
		Size:        be.Uint64(buf[24:]),
		L1Size:      be.Uint32(buf[36:]),
		L1Offset:    be.Uint64(buf[40:]),
	}
	if h.Version != 2 && h.Version != 3 {
		return Header{}, fmt.Errorf("%s: qcow2 version %d: %w", path, h.Version, ErrUnsupported)
	}
	if h.ClusterBits < 9 || h.ClusterBits > 21 {
		return Header{}, fmt.Errorf("%s: cluster bits %d: %w", path, h.ClusterBits, ErrUnsupported)
	}
	extStart := 72
	if h.Version == 3 {
		if len(buf) < headerLength {
			return Header{}, fmt.Errorf("%s: short header: %w", path, ErrUnsupported)
		}
		h.Incompatible = be.Uint64(buf[72:])
		extStart = int(be.Uint32(buf[100:]))
	}
	bOff, bLen := be.Uint64(buf[8:]), uint64(be.Uint32(buf[16:]))
	if bOff != 0 {
		if bOff+bLen > uint64(len(buf)) {
			return Header{}, fmt.Errorf("%s: backing file name outside the first cluster: %w", path, ErrUnsupported)
		}
		h.Backing = string(buf[bOff : bOff+bLen])
	}
	for off := extStart; off+8 <= len(buf); {
		typ, l := be.Uint32(buf[off:]), int(be.Uint32(buf[off+4:]))
		if typ == 0 || off+8+l > len(buf) {
			break
		}
		if typ == extBackingFmt {
			h.BackingFormat = string(buf[off+8 : off+8+l])
		}
		off += 8 + (l+7)/8*8
	}
	return h, nil
}

// Allocated is how many bytes of guest data the top layer of the image at path holds:
// its data clusters (compressed ones included), not clusters reading from the
// backing file, not zero clusters, the last one counted up to the virtual size — what
// `qemu-img map` lists as depth 0, data, not zero. ErrUnsupported for images these
// readers do not interpret (external data file, extended L2, other features).
func Allocated(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	h, err := readHeader(f, path)
	if err != nil {
		return 0, err
	}
	if h.Incompatible&^(incompatDirty|incompatCorrupt) != 0 {
		return 0, fmt.Errorf("%s: incompatible features %#x: %w", path, h.Incompatible, ErrUnsupported)
	}
	cs := uint64(1) << h.ClusterBits
	l2Entries := cs / 8
	be := binary.BigEndian
	l1 := make([]byte, uint64(h.L1Size)*8)
	if _, err := f.ReadAt(l1, int64(h.L1Offset)); err != nil {
		return 0, fmt.Errorf("reading the L1 table of %s: %w", path, err)
	}
	l2 := make([]byte, cs)
	var n uint64
	for i := uint64(0); i < uint64(h.L1Size); i++ {
		l2Off := be.Uint64(l1[8*i:]) & l2EntryOffset
		if l2Off == 0 {
			continue
		}
		if _, err := f.ReadAt(l2, int64(l2Off)); err != nil {
			return 0, fmt.Errorf("reading an L2 table of %s: %w", path, err)
		}
		for j := uint64(0); j < l2Entries; j++ {
			e := be.Uint64(l2[8*j:])
			data := e&l2Compressed != 0 || (e&l2EntryOffset != 0 && e&l2AllZero == 0)
			if !data {
				continue
			}
			start := (i*l2Entries + j) * cs
			if start >= h.Size {
				break
			}
			n += min(cs, h.Size-start)
		}
	}
	return n, nil
}
