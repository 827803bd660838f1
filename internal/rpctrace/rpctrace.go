// Package rpctrace counts the libvirt RPCs a client makes. Proxy listens on a Unix
// socket, forwards every byte to libvirtd's socket unchanged, and reads the packet
// headers on the way: each call's procedure and the time until its reply. A client
// connects through it with a URI such as qemu+unix:///system?socket=PATH, so the
// client under test needs no change and no debug switch.
//
// It is a measuring tool for tests and benchmarks, not part of autosnap.
package rpctrace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// DefaultUpstream is libvirtd's read-write socket on Debian.
const DefaultUpstream = "/var/run/libvirt/libvirt-sock"

const (
	programRemote    = 0x20008086
	programQEMU      = 0x20008087
	programKeepalive = 0x6b656570

	typeCall        = 0
	typeReply       = 1
	typeCallWithFDs = 4
	typeReplyFDs    = 5

	headerLen = 24 // program, version, procedure, type, serial, status
)

// Stat is what the proxy saw of one procedure.
type Stat struct {
	Name  string
	Calls int
	// Wait is the total time from each call leaving the client to its reply leaving
	// libvirtd (the daemon's work plus queueing).
	Wait time.Duration
}

// Call is one call the proxy saw.
type Call struct {
	Name  string
	Start time.Time
	// Wait is the time until libvirtd's reply (0 while there is none).
	Wait time.Duration
}

// Proxy forwards a Unix socket to libvirtd and counts the calls.
type Proxy struct {
	Path     string
	upstream string
	ln       net.Listener

	mu    sync.Mutex
	stats map[string]*Stat
	seq   []Call
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// Start listens on path (which must not exist) and forwards each connection to
// upstream (DefaultUpstream when empty).
func Start(path, upstream string) (*Proxy, error) {
	if upstream == "" {
		upstream = DefaultUpstream
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("rpctrace: listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	p := &Proxy{Path: path, upstream: upstream, ln: ln, stats: map[string]*Stat{}, conns: map[net.Conn]bool{}}
	go p.accept()
	return p, nil
}

// URI is the libvirt URI that connects through the proxy.
func (p *Proxy) URI() string { return "qemu+unix:///system?socket=" + p.Path }

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("unix", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[u] = true, true
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(c, u)
	}
}

func (p *Proxy) serve(c, u net.Conn) {
	defer p.wg.Done()
	var sent sync.Map // serial → index of the call in p.seq
	done := make(chan struct{}, 2)
	go func() {
		_ = p.pump(u, c, func(h header) {
			if h.program == programKeepalive || (h.typ != typeCall && h.typ != typeCallWithFDs) {
				return
			}
			sent.Store(h.serial, p.call(h))
		})
		u.(*net.UnixConn).CloseWrite()
		done <- struct{}{}
	}()
	go func() {
		_ = p.pump(c, u, func(h header) {
			if h.typ != typeReply && h.typ != typeReplyFDs {
				return
			}
			if i, ok := sent.LoadAndDelete(h.serial); ok {
				p.reply(i.(int))
			}
		})
		c.(*net.UnixConn).CloseWrite()
		done <- struct{}{}
	}()
	<-done
	<-done
	c.Close()
	u.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, u)
	p.mu.Unlock()
}

type header struct {
	program uint32
	proc    int32
	typ     uint32
	serial  uint32
}

// pump copies packets from src to dst, calling see with each packet's header.
func (p *Proxy) pump(dst io.Writer, src io.Reader, see func(header)) error {
	var lenBuf [4]byte
	buf := make([]byte, 64<<10)
	for {
		if _, err := io.ReadFull(src, lenBuf[:]); err != nil {
			return err
		}
		n := int(binary.BigEndian.Uint32(lenBuf[:]))
		if n < 4+headerLen || n > 64<<20 {
			return fmt.Errorf("rpctrace: bad packet length %d", n)
		}
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		pkt := buf[:n]
		copy(pkt, lenBuf[:])
		if _, err := io.ReadFull(src, pkt[4:]); err != nil {
			return err
		}
		h := pkt[4:]
		see(header{
			program: binary.BigEndian.Uint32(h[0:]),
			proc:    int32(binary.BigEndian.Uint32(h[8:])),
			typ:     binary.BigEndian.Uint32(h[12:]),
			serial:  binary.BigEndian.Uint32(h[16:]),
		})
		if _, err := dst.Write(pkt); err != nil {
			return err
		}
	}
}

// Name is the procedure's name as go-libvirt spells its method ("DomainSnapshotGetXMLDesc"),
// with "qemu." in front for the QEMU program.
func Name(program uint32, proc int32) string {
	switch program {
	case programRemote:
		if n, ok := remoteProcs[proc]; ok {
			return n
		}
	case programQEMU:
		if n, ok := qemuProcs[proc]; ok {
			return "qemu." + n
		}
	}
	return fmt.Sprintf("%#x.%d", program, proc)
}

// call records a call and returns its index in p.seq.
func (p *Proxy) call(h header) int {
	n := Name(h.program, h.proc)
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.stats[n]
	if !ok {
		s = &Stat{Name: n}
		p.stats[n] = s
	}
	s.Calls++
	p.seq = append(p.seq, Call{Name: n, Start: time.Now()})
	return len(p.seq) - 1
}

// reply records the reply to the call at index i of p.seq.
func (p *Proxy) reply(i int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i >= len(p.seq) { // Reset in between
		return
	}
	c := &p.seq[i]
	c.Wait = time.Since(c.Start)
	if s, ok := p.stats[c.Name]; ok {
		s.Wait += c.Wait
	}
}

// Stats returns what the proxy saw since the start or the last Reset, most called
// first.
func (p *Proxy) Stats() []Stat {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Stat, 0, len(p.stats))
	for _, s := range p.stats {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Calls != out[j].Calls {
			return out[i].Calls > out[j].Calls
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Calls returns the number of calls of the named procedure.
func (p *Proxy) Calls(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.stats[name]; ok {
		return s.Calls
	}
	return 0
}

// Total is the number of calls of every procedure.
func (p *Proxy) Total() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.seq)
}

// Sequence returns the calls in the order they left the clients.
func (p *Proxy) Sequence() []Call {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Call(nil), p.seq...)
}

// Reset forgets what was counted.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats = map[string]*Stat{}
	p.seq = nil
}

// Format renders stats as a table: calls, calls per unit (when per > 0), total wait.
func Format(stats []Stat, per int) string {
	var b strings.Builder
	total := 0
	for _, s := range stats {
		total += s.Calls
	}
	for _, s := range stats {
		if s.Calls == 0 {
			continue
		}
		if per > 0 {
			fmt.Fprintf(&b, "%7d %8.2f  %-36s %9.1f ms\n", s.Calls, float64(s.Calls)/float64(per), s.Name, float64(s.Wait.Microseconds())/1000)
		} else {
			fmt.Fprintf(&b, "%7d  %-36s %9.1f ms\n", s.Calls, s.Name, float64(s.Wait.Microseconds())/1000)
		}
	}
	if per > 0 {
		fmt.Fprintf(&b, "%7d %8.2f  total\n", total, float64(total)/float64(per))
	} else {
		fmt.Fprintf(&b, "%7d  total\n", total)
	}
	return b.String()
}

// Close stops listening, cuts the connections still open and waits for them to end.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
