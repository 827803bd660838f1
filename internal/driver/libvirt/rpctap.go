package libvirt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
)

// The libvirt RPC framing (libvirt's src/rpc/virnetprotocol.x): a packet is a 4-byte
// length (itself included), a 24-byte header and an XDR payload.
const (
	rpcLenSize     = 4
	rpcHeaderSize  = 24
	rpcRemoteProg  = 0x20008086
	rpcVersion     = 1
	rpcTypeCall    = 0
	rpcTypeReply   = 1
	rpcStatusOK    = 0
	rpcStatusError = 1
	// Procedures: REMOTE_PROC_DOMAIN_SNAPSHOT_GET_XML_DESC, …_SNAPSHOT_CURRENT,
	// …_LIST_ALL_SNAPSHOTS.
	rpcSnapshotGetXMLDesc = 186
	rpcSnapshotCurrent    = 191
	rpcListAllSnapshots   = 274
	// rpcSerialBase starts the serials of the tap's own calls, far above go-libvirt's,
	// which count up from 1 per connection.
	rpcSerialBase = 1 << 30
	// rpcMaxPacket is libvirt's limit on one packet (VIR_NET_MESSAGE_MAX + length).
	rpcMaxPacket = 32<<20 + rpcLenSize
)

// rpcTap sits between go-libvirt and its connection to libvirtd, so that the driver
// can issue some calls itself on the same connection: the snapshot XML reads of a
// listing, which are most of `status` and cost go-libvirt more CPU (reflective XDR,
// a goroutine hand-off and two copies per answer) than the decoding they feed. The
// tap writes a whole batch of calls at once and decodes each answer in the buffer it
// was read into. Everything else passes through unchanged.
//
// Writes: go-libvirt writes each packet with one or more Write calls under its own
// lock; the tap holds wmu from a packet's first byte to its last, and writes its own
// packets whole under wmu, so packets never interleave. Reads: only go-libvirt's
// reader goroutine calls Read; the tap reads large chunks, hands the answers to its
// own calls to their handlers there, and returns every other packet's bytes.
type rpcTap struct {
	net.Conn

	wmu  sync.Mutex
	wrem int // bytes of go-libvirt's packet being written still to come; under wmu

	in       []byte // bytes read from the connection
	inStart  int    // first byte of in not yet routed
	out      []byte // bytes of go-libvirt's packets not yet returned by Read
	serial   atomic.Int32
	mu       sync.Mutex
	pending  map[int32]func(status uint32, payload []byte)
	closeErr error // set once the connection failed; under mu
}

// tapDialer dials through inner and wraps the connection in a tap.
type tapDialer struct {
	inner interface{ Dial() (net.Conn, error) }
	tap   *rpcTap
}

func (t *tapDialer) Dial() (net.Conn, error) {
	c, err := t.inner.Dial()
	if err != nil {
		return nil, err
	}
	t.tap = &rpcTap{Conn: c, in: make([]byte, 0, 256<<10), pending: map[int32]func(uint32, []byte){}}
	t.tap.serial.Store(rpcSerialBase)
	return t.tap, nil
}

// connectTapped connects like golibvirt.ConnectToURI, through a tap, for the URIs whose
// dialer the driver can build itself (the local socket); for any other it returns a
// nil tap and the caller connects the ordinary way.
func connectTapped(u *url.URL) (*golibvirt.Libvirt, *rpcTap, error) {
	if !isLocal(u) {
		return nil, nil, nil
	}
	var opts []dialers.LocalOption
	for k, v := range u.Query() {
		if k != "socket" || len(v) != 1 {
			return nil, nil, nil // options go-libvirt interprets: let it
		}
		opts = append(opts, dialers.WithSocket(v[0]))
	}
	td := &tapDialer{inner: dialers.NewLocal(opts...)}
	l := golibvirt.NewWithDialer(td)
	if err := l.ConnectToURI(golibvirt.RemoteURI(u)); err != nil {
		return nil, nil, fmt.Errorf("failed to connect to libvirt: %w", err)
	}
	return l, td.tap, nil
}

func (t *rpcTap) Write(p []byte) (int, error) {
	if t.wrem == 0 {
		t.wmu.Lock()
		if len(p) < rpcLenSize {
			// Not a packet start the tap can read: hold the lock for this write only.
			defer t.wmu.Unlock()
			return t.Conn.Write(p)
		}
		t.wrem = int(binary.BigEndian.Uint32(p))
	}
	n, err := t.Conn.Write(p)
	t.wrem -= n
	if t.wrem <= 0 || err != nil {
		t.wrem = 0
		t.wmu.Unlock()
	}
	return n, err
}

func (t *rpcTap) Read(p []byte) (int, error) {
	for len(t.out) == 0 {
		if err := t.route(); err != nil {
			return 0, err
		}
	}
	n := copy(p, t.out)
	t.out = t.out[n:]
	return n, nil
}

// route reads from the connection until a packet for go-libvirt is complete (left in
// t.out), handling the tap's own answers on the way.
func (t *rpcTap) route() error {
	for {
		buf := t.in[t.inStart:]
		if len(buf) >= rpcLenSize+rpcHeaderSize {
			size := int(binary.BigEndian.Uint32(buf))
			if size < rpcLenSize+rpcHeaderSize || size > rpcMaxPacket {
				// Not libvirt framing: let go-libvirt fail on it.
				t.out, t.inStart = buf, len(t.in)
				return nil
			}
			if len(buf) >= size {
				pkt := buf[:size]
				t.inStart += size
				if t.handle(pkt) {
					continue
				}
				t.out = pkt
				return nil
			}
			if size > cap(t.in) {
				grown := make([]byte, len(buf), size)
				copy(grown, buf)
				t.in, t.inStart = grown, 0
			}
		}
		// Need more: keep what is unrouted, at the front.
		if t.inStart > 0 {
			n := copy(t.in, t.in[t.inStart:])
			t.in, t.inStart = t.in[:n], 0
		}
		n, err := t.Conn.Read(t.in[len(t.in):cap(t.in)])
		t.in = t.in[:len(t.in)+n]
		if err != nil && n == 0 {
			t.fail(err)
			return err
		}
	}
}

// handle passes pkt to the tap's own call it answers, if any.
func (t *rpcTap) handle(pkt []byte) bool {
	h := pkt[rpcLenSize:]
	serial := int32(binary.BigEndian.Uint32(h[16:]))
	if serial < rpcSerialBase || binary.BigEndian.Uint32(h[0:]) != rpcRemoteProg || binary.BigEndian.Uint32(h[12:]) != rpcTypeReply {
		return false
	}
	t.mu.Lock()
	f, ok := t.pending[serial]
	delete(t.pending, serial)
	t.mu.Unlock()
	if ok {
		f(binary.BigEndian.Uint32(h[20:]), pkt[rpcLenSize+rpcHeaderSize:])
	}
	return ok
}

// fail ends every call in flight: the connection is gone.
func (t *rpcTap) fail(err error) {
	t.mu.Lock()
	if t.closeErr == nil {
		t.closeErr = fmt.Errorf("connection to libvirt lost: %w", err)
	}
	calls := t.pending
	t.pending = map[int32]func(uint32, []byte){}
	t.mu.Unlock()
	for _, f := range calls {
		f(rpcStatusError, nil)
	}
}

// xdrString appends an XDR string.
func xdrString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	b = append(b, s...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// xdrReadString reads an XDR string at the start of b, returning it (aliasing b)
// and the rest.
func xdrReadString(b []byte) ([]byte, []byte, error) {
	if len(b) < 4 {
		return nil, nil, errors.New("short XDR string")
	}
	n := int(binary.BigEndian.Uint32(b))
	padded := (n + 3) &^ 3
	if n < 0 || len(b)-4 < padded {
		return nil, nil, errors.New("short XDR string")
	}
	return b[4 : 4+n], b[4+padded:], nil
}

// rpcError decodes libvirt's error answer (remote_error) into the error go-libvirt
// would return for it.
func rpcError(payload []byte) error {
	if len(payload) < 12 {
		return errors.New("libvirt sent an unreadable error")
	}
	code := binary.BigEndian.Uint32(payload)
	var msg string
	if binary.BigEndian.Uint32(payload[8:]) != 0 {
		m, _, err := xdrReadString(payload[12:])
		if err != nil {
			return errors.New("libvirt sent an unreadable error")
		}
		msg = string(m)
	}
	return golibvirt.Error{Code: code, Message: msg}
}

// tapCall is one call of a batch: its procedure, its XDR arguments, and what to do
// with the answer's payload (in the tap's read buffer: valid only during handle) or
// the error libvirt (or the lost connection) gave instead.
type tapCall struct {
	proc   uint32
	args   []byte
	handle func(payload []byte, err error)
}

// batch writes calls at once and returns when every answer has been handled, or
// with ctx's error (answers arriving later are dropped). Handlers run on go-libvirt's
// reader goroutine, one at a time.
func (t *rpcTap) batch(ctx context.Context, calls []tapCall) error {
	if len(calls) == 0 {
		return nil
	}
	var left atomic.Int32
	left.Store(int32(len(calls)))
	done := make(chan struct{})
	var abandoned atomic.Bool
	size := 0
	for _, c := range calls {
		size += rpcLenSize + rpcHeaderSize + len(c.args)
	}
	req := make([]byte, 0, size)
	serials := make([]int32, len(calls))
	t.mu.Lock()
	if t.closeErr != nil {
		err := t.closeErr
		t.mu.Unlock()
		return err
	}
	for i, c := range calls {
		serial := t.serial.Add(1)
		if serial < rpcSerialBase {
			t.serial.Store(rpcSerialBase)
			serial = t.serial.Add(1)
		}
		serials[i] = serial
		t.pending[serial] = func(status uint32, payload []byte) {
			if !abandoned.Load() {
				switch {
				case payload == nil:
					c.handle(nil, t.lostErr())
				case status != rpcStatusOK:
					c.handle(nil, rpcError(payload))
				default:
					c.handle(payload, nil)
				}
			}
			if left.Add(-1) == 0 {
				close(done)
			}
		}
		req = binary.BigEndian.AppendUint32(req, uint32(rpcLenSize+rpcHeaderSize+len(c.args)))
		for _, v := range []uint32{rpcRemoteProg, rpcVersion, c.proc, rpcTypeCall, uint32(serial), rpcStatusOK} {
			req = binary.BigEndian.AppendUint32(req, v)
		}
		req = append(req, c.args...)
	}
	t.mu.Unlock()
	t.wmu.Lock()
	_, err := t.Conn.Write(req)
	t.wmu.Unlock()
	if err != nil {
		abandoned.Store(true)
		t.mu.Lock()
		for _, s := range serials {
			delete(t.pending, s)
		}
		t.mu.Unlock()
		return fmt.Errorf("connection to libvirt: %w", err)
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		abandoned.Store(true)
		return fmt.Errorf("libvirt did not answer in time: %w", ctx.Err())
	}
}

// xdrDomain appends a remote_nonnull_domain.
func xdrDomain(b []byte, d golibvirt.Domain) []byte {
	b = xdrString(b, d.Name)
	b = append(b, d.UUID[:]...)
	return binary.BigEndian.AppendUint32(b, uint32(d.ID))
}

// xdrReadSnapshot reads a remote_nonnull_domain_snapshot, copying what it keeps.
func xdrReadSnapshot(b []byte) (golibvirt.DomainSnapshot, []byte, error) {
	var s golibvirt.DomainSnapshot
	name, b, err := xdrReadString(b)
	if err != nil {
		return s, nil, err
	}
	dname, b, err := xdrReadString(b)
	if err != nil || len(b) < 20 {
		return s, nil, errors.New("short XDR snapshot")
	}
	s.Name, s.Dom.Name = string(name), string(dname)
	copy(s.Dom.UUID[:], b)
	s.Dom.ID = int32(binary.BigEndian.Uint32(b[16:]))
	return s, b[20:], nil
}

// listSnapshots lists dom's snapshots and its current one (ok false: none) with
// both calls written together.
func (t *rpcTap) listSnapshots(ctx context.Context, dom golibvirt.Domain) (snaps []golibvirt.DomainSnapshot, cur string, hasCur bool, err error) {
	var lerr, cerr error
	list := xdrDomain(nil, dom)
	list = binary.BigEndian.AppendUint32(list, 1) // need_results
	list = binary.BigEndian.AppendUint32(list, 0) // flags
	current := binary.BigEndian.AppendUint32(xdrDomain(nil, dom), 0)
	err = t.batch(ctx, []tapCall{
		{proc: rpcListAllSnapshots, args: list, handle: func(p []byte, err error) {
			if err != nil {
				lerr = err
				return
			}
			if len(p) < 4 {
				lerr = errors.New("short snapshot list")
				return
			}
			n := int(binary.BigEndian.Uint32(p))
			p = p[4:]
			if n < 0 || n > len(p)/24 {
				lerr = errors.New("bad snapshot count")
				return
			}
			snaps = make([]golibvirt.DomainSnapshot, n)
			for i := range snaps {
				if snaps[i], p, lerr = xdrReadSnapshot(p); lerr != nil {
					return
				}
			}
		}},
		{proc: rpcSnapshotCurrent, args: current, handle: func(p []byte, err error) {
			if err != nil {
				cerr = err
				return
			}
			var s golibvirt.DomainSnapshot
			if s, _, cerr = xdrReadSnapshot(p); cerr == nil {
				cur, hasCur = s.Name, true
			}
		}},
	})
	switch {
	case err != nil:
		return nil, "", false, err
	case lerr != nil:
		return nil, "", false, lerr
	case cerr != nil && errCode(cerr) != golibvirt.ErrNoDomainSnapshot:
		return nil, "", false, fmt.Errorf("reading current snapshot: %w", cerr)
	}
	return snaps, cur, hasCur, nil
}

// snapshotXMLs reads the XML of each of snaps with calls written together, and gives
// each answer to decode in the tap's read buffer (valid only during the call: decode
// copies what it keeps), or err for a call libvirt failed.
func (t *rpcTap) snapshotXMLs(ctx context.Context, snaps []golibvirt.DomainSnapshot, decode func(i int, xml []byte, err error)) error {
	calls := make([]tapCall, len(snaps))
	args := make([]byte, 0, len(snaps)*96)
	for i, s := range snaps {
		start := len(args)
		args = xdrString(args, s.Name)
		args = xdrDomain(args, s.Dom)
		args = binary.BigEndian.AppendUint32(args, 0) // flags
		calls[i] = tapCall{proc: rpcSnapshotGetXMLDesc, args: args[start:len(args):len(args)], handle: func(p []byte, err error) {
			if err != nil {
				decode(i, nil, err)
				return
			}
			x, _, err := xdrReadString(p)
			decode(i, x, err)
		}}
	}
	return t.batch(ctx, calls)
}

func (t *rpcTap) lostErr() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closeErr != nil {
		return t.closeErr
	}
	return io.ErrUnexpectedEOF
}
