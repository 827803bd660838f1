package libvirt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// rpcPacket builds a packet: header fields as given, then payload.
func rpcPacket(prog, proc, typ uint32, serial int32, status uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(rpcLenSize+rpcHeaderSize+len(payload)))
	for _, v := range []uint32{prog, rpcVersion, proc, typ, uint32(serial), status} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return append(b, payload...)
}

// readPacket reads one whole packet from r.
func readPacket(r io.Reader) ([]byte, error) {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	p := make([]byte, binary.BigEndian.Uint32(l[:]))
	copy(p, l[:])
	_, err := io.ReadFull(r, p[4:])
	return p, err
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// TestTapSeparatesItsAnswers: the tap's own answers, arriving between, before and
// after go-libvirt's (one of them far larger than a read), go to their calls, decoded
// (the XML, libvirt's error with its code); go-libvirt reads exactly its own bytes,
// in order, through small reads. go-libvirt's packets written piecewise (as its
// buffered writer does) while the tap writes a batch arrive whole and unmixed.
func TestTapSeparatesItsAnswers(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	tap := &rpcTap{Conn: client, in: make([]byte, 0, 1024), pending: map[int32]func(uint32, []byte){}}
	tap.serial.Store(rpcSerialBase)

	big := rpcPacket(rpcRemoteProg, 7, rpcTypeReply, 1, rpcStatusOK, pattern(100_000, 1))
	small := rpcPacket(rpcRemoteProg, 8, rpcTypeReply, 2, rpcStatusOK, pattern(12, 2))
	event := rpcPacket(rpcRemoteProg, 9, 2, rpcSerialBase+77, rpcStatusOK, pattern(40, 3)) // not a reply: go-libvirt's
	goWrites := [][]byte{
		rpcPacket(rpcRemoteProg, 10, rpcTypeCall, 3, rpcStatusOK, pattern(9000, 4)),
		rpcPacket(rpcRemoteProg, 11, rpcTypeCall, 4, rpcStatusOK, pattern(20, 5)),
	}
	errPayload := binary.BigEndian.AppendUint32(nil, uint32(golibvirt.ErrNoDomainSnapshot))
	errPayload = binary.BigEndian.AppendUint32(errPayload, 10)
	errPayload = binary.BigEndian.AppendUint32(errPayload, 1)
	errPayload = xdrString(errPayload, "no such snapshot")

	// The server: reads every packet the client side writes, then answers.
	serverDone := make(chan error, 1)
	var calls, goSeen [][]byte
	go func() {
		serverDone <- func() error {
			for len(calls) < 3 || len(goSeen) < len(goWrites) {
				p, err := readPacket(server)
				if err != nil {
					return err
				}
				if int32(binary.BigEndian.Uint32(p[20:])) >= rpcSerialBase {
					calls = append(calls, p)
				} else {
					goSeen = append(goSeen, p)
				}
			}
			serial := func(i int) int32 { return int32(binary.BigEndian.Uint32(calls[i][20:])) }
			var out []byte
			out = append(out, rpcPacket(rpcRemoteProg, rpcSnapshotGetXMLDesc, rpcTypeReply, serial(1), rpcStatusOK, xdrString(nil, "<b/>"))...)
			out = append(out, big...)
			out = append(out, rpcPacket(rpcRemoteProg, rpcSnapshotGetXMLDesc, rpcTypeReply, serial(2), rpcStatusError, errPayload)...)
			out = append(out, event...)
			out = append(out, small...)
			out = append(out, rpcPacket(rpcRemoteProg, rpcSnapshotGetXMLDesc, rpcTypeReply, serial(0), rpcStatusOK, xdrString(nil, "<a>xyz</a>"))...)
			for len(out) > 0 { // uneven pieces, so packets straddle reads
				n := min(len(out), 777)
				if _, err := server.Write(out[:n]); err != nil {
					return err
				}
				out = out[n:]
			}
			return nil
		}()
	}()

	// go-libvirt's side: a reader taking small bites, a writer writing in pieces.
	var got bytes.Buffer
	readerDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 100)
		for {
			n, err := tap.Read(buf)
			got.Write(buf[:n])
			if err != nil {
				readerDone <- err
				return
			}
		}
	}()
	var wg sync.WaitGroup
	wg.Add(1)
	midPacket := make(chan struct{})
	go func() {
		defer wg.Done()
		for k, p := range goWrites {
			for len(p) > 0 {
				n := min(len(p), 4096)
				if _, err := tap.Write(p[:n]); err != nil {
					t.Error(err)
					return
				}
				p = p[n:]
				if k == 0 && len(p) > 0 && n == 4096 && len(p) < 4096 {
					close(midPacket) // the tap's batch goes now, and must wait
					time.Sleep(50 * time.Millisecond)
				}
			}
		}
	}()
	<-midPacket

	snaps := []golibvirt.DomainSnapshot{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	res := make([]string, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := tap.snapshotXMLs(ctx, snaps, func(i int, xml []byte, err error) {
		if err != nil {
			res[i] = fmt.Sprintf("error %d: %v", errCode(err), err)
			return
		}
		res[i] = string(xml)
	})
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := <-serverDone; err != nil {
		t.Fatal(err)
	}
	want := []string{"<a>xyz</a>", "<b/>", fmt.Sprintf("error %d: no such snapshot", golibvirt.ErrNoDomainSnapshot)}
	for i := range want {
		if res[i] != want[i] {
			t.Errorf("snapshot %s: got %q, want %q", snaps[i].Name, res[i], want[i])
		}
	}
	for i, p := range goWrites {
		if i >= len(goSeen) || !bytes.Equal(goSeen[i], p) {
			t.Errorf("go-libvirt's packet %d arrived changed or mixed with the tap's", i)
		}
	}
	for i, c := range calls {
		if proc := binary.BigEndian.Uint32(c[12:]); proc != rpcSnapshotGetXMLDesc {
			t.Errorf("call %d: procedure %d", i, proc)
		}
		if name, _, err := xdrReadString(c[rpcLenSize+rpcHeaderSize:]); err != nil || string(name) != snaps[i].Name {
			t.Errorf("call %d names snapshot %q (%v), want %q", i, name, err, snaps[i].Name)
		}
	}

	// Losing the connection ends go-libvirt's reads and every call in flight.
	server.Close()
	if err := <-readerDone; err == nil {
		t.Error("the reader saw no error after the connection closed")
	}
	wantGo := append(append(append([]byte{}, big...), event...), small...)
	if !bytes.Equal(got.Bytes(), wantGo) {
		t.Errorf("go-libvirt read %d bytes, want its %d exactly", got.Len(), len(wantGo))
	}
	err = tap.snapshotXMLs(ctx, snaps[:1], func(int, []byte, error) {})
	if err == nil || !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("a call after the connection was lost: %v", err)
	}
}
