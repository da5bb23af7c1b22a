//go:build ignore

// cutrelay asks whether forwarding a write to the Secondary piece by piece,
// as its payload arrives from the client, would let protocol C keep up
// with 1 MiB writes better than forwarding it whole once it is in. It is
// a bare NBD server of its own (fixed newstyle, NBD_OPT_GO, simple
// replies; READ, WRITE, FLUSH, DISC; one connection at a time), written
// for the study from the NBD protocol document, with a receiver process
// as pairfloor's: frames of a 16-byte head (sequence, length, last flag),
// data and a GMAC tag; the receiver checks the tag, pwrites the data and
// answers the last frame of each write. Modes:
//
//	sa     pwrite and answer
//	C      read the whole payload, send it as one frame, pwrite, answer
//	       the client once the receiver answered
//	cut    as C, but send (and pwrite) each -piece bytes as soon as they
//	       are in
//
// The connection's reader does the pwrites and sends itself; replies go
// from the goroutine that reads the receiver's answers. Study tool, not
// the bench (root for relayab.sh's cache drop):
//
//	go build -o /tmp/cutrelay bench/results/2026-12-07-vm-session22/cutrelay.go
//	RELAY=/tmp/cutrelay bench/results/2026-12-07-vm-session22/relayab.sh 3 8 sa C cut
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/repd/repd/internal/gmac"
)

const (
	maxData = 1 << 20
	fhead   = 16
)

var key = make([]byte, 32)

func main() {
	if p := os.Getenv("CUTRELAY_RECV"); p != "" {
		if err := receive(p); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
			fmt.Fprintln(os.Stderr, "receiver:", err)
			os.Exit(1)
		}
		return
	}
	serve := flag.String("serve", "", "unix:PATH")
	mode := flag.String("mode", "C", "sa, C or cut")
	piece := flag.Int("piece", 64<<10, "cut: bytes per frame at least")
	file := flag.String("file", "/var/tmp/cutrelay.img", "")
	size := flag.Int64("size", 512<<20, "")
	flag.Parse()
	if err := run(*serve, *mode, *piece, *file, *size); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func prefill(file string, size int64) error {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, maxData)
	for i := range buf {
		buf[i] = byte(i * 13)
	}
	for off := int64(0); off < size; off += maxData {
		if _, err := f.WriteAt(buf, off); err != nil {
			return err
		}
	}
	return nil
}

type relay struct {
	f     *os.File
	size  int64
	mode  string
	piece int
	peer  net.Conn
	mac   *gmac.MAC
	seq   uint64
	out   []byte
	nonce []byte

	mu    sync.Mutex // waits
	waits []*pending
	wmu   sync.Mutex // the client connection's writes
	c     net.Conn
}

// pending is a write whose reply waits for its pwrites and the
// receiver's answer: the second of the two to finish sends it.
type pending struct {
	cookie uint64
	left   atomic.Int32
}

func run(addr, mode string, piece int, file string, size int64) error {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		return fmt.Errorf("-serve %q: want unix:PATH", addr)
	}
	if mode != "sa" && mode != "C" && mode != "cut" {
		return fmt.Errorf("-mode %q: want sa, C or cut", mode)
	}
	if err := prefill(file, size); err != nil {
		return err
	}
	defer os.Remove(file)
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	r := &relay{f: f, size: size, mode: mode, piece: piece, out: make([]byte, fhead+maxData+gmac.TagSize), nonce: make([]byte, gmac.NonceSize)}
	if mode != "sa" {
		pf := file + ".peer"
		if err := prefill(pf, size); err != nil {
			return err
		}
		defer os.Remove(pf)
		l, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			return err
		}
		lf, _ := l.(*net.TCPListener).File()
		exe, _ := os.Executable()
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), "CUTRELAY_RECV="+pf)
		cmd.ExtraFiles = []*os.File{lf}
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		lf.Close()
		r.peer, err = net.Dial("tcp", l.Addr().String())
		l.Close()
		if err != nil {
			return err
		}
		defer cmd.Wait()
		defer r.peer.Close()
		if r.mac, err = gmac.New(key); err != nil {
			return err
		}
		go r.answers()
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; l.Close() }()
	for {
		c, err := l.Accept()
		if err != nil {
			return nil
		}
		if err := r.serveConn(c); err != nil && !errors.Is(err, io.EOF) {
			fmt.Fprintln(os.Stderr, "conn:", err)
		}
		c.Close()
	}
}

// The NBD protocol's numbers (doc/proto.md).
const (
	nbdMagic      = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic      = 0x49484156454f5054 // "IHAVEOPT"
	repMagic      = 0x3e889045565a9
	reqMagic      = 0x25609513
	simpleMagic   = 0x67446698
	optGo         = 7
	optInfo       = 6
	optAbort      = 2
	repAck        = 1
	repInfo       = 3
	repErrUnsup   = 1<<31 + 1
	flagHasFlags  = 1
	flagSendFlush = 1 << 2
	cmdRead       = 0
	cmdWrite      = 1
	cmdDisc       = 2
	cmdFlush      = 3
)

func (r *relay) serveConn(c net.Conn) error {
	be := binary.BigEndian
	var b [28]byte
	be.PutUint64(b[0:], nbdMagic)
	be.PutUint64(b[8:], optMagic)
	be.PutUint16(b[16:], 1|2) // FIXED_NEWSTYLE | NO_ZEROES
	if _, err := c.Write(b[:18]); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, b[:4]); err != nil {
		return err
	}
	reply := func(opt, typ uint32, data []byte) error {
		h := make([]byte, 20, 20+len(data))
		be.PutUint64(h[0:], repMagic)
		be.PutUint32(h[8:], opt)
		be.PutUint32(h[12:], typ)
		be.PutUint32(h[16:], uint32(len(data)))
		_, err := c.Write(append(h, data...))
		return err
	}
	for {
		if _, err := io.ReadFull(c, b[:16]); err != nil {
			return err
		}
		if be.Uint64(b[0:]) != optMagic {
			return fmt.Errorf("bad option magic")
		}
		opt, n := be.Uint32(b[8:]), be.Uint32(b[12:])
		if n > 4096 {
			return fmt.Errorf("option of %d bytes", n)
		}
		if _, err := io.CopyN(io.Discard, c, int64(n)); err != nil {
			return err
		}
		switch opt {
		case optAbort:
			return nil
		case optGo, optInfo:
			info := make([]byte, 12)
			be.PutUint16(info[0:], 0) // NBD_INFO_EXPORT
			be.PutUint64(info[2:], uint64(r.size))
			be.PutUint16(info[10:], flagHasFlags|flagSendFlush)
			if err := reply(opt, repInfo, info); err != nil {
				return err
			}
			if err := reply(opt, repAck, nil); err != nil {
				return err
			}
			if opt == optGo {
				return r.transmission(c)
			}
		default:
			if err := reply(opt, repErrUnsup, nil); err != nil {
				return err
			}
		}
	}
}

func (r *relay) simpleReply(cookie uint64, errno uint32, data []byte) error {
	var h [16]byte
	binary.BigEndian.PutUint32(h[0:], simpleMagic)
	binary.BigEndian.PutUint32(h[4:], errno)
	binary.BigEndian.PutUint64(h[8:], cookie)
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if _, err := r.c.Write(h[:]); err != nil {
		return err
	}
	if len(data) > 0 {
		_, err := r.c.Write(data)
		return err
	}
	return nil
}

func (r *relay) transmission(c net.Conn) error {
	r.c = c
	be := binary.BigEndian
	var h [28]byte
	buf := make([]byte, maxData)
	for {
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return err
		}
		if be.Uint32(h[0:]) != reqMagic {
			return fmt.Errorf("bad request magic")
		}
		typ, cookie, off, n := be.Uint16(h[6:]), be.Uint64(h[8:]), int64(be.Uint64(h[16:])), int(be.Uint32(h[24:]))
		if off < 0 || n > maxData || off+int64(n) > r.size {
			return fmt.Errorf("request %d+%d out of range", off, n)
		}
		switch typ {
		case cmdDisc:
			return nil
		case cmdFlush:
			if err := r.f.Sync(); err != nil {
				return err
			}
			if err := r.simpleReply(cookie, 0, nil); err != nil {
				return err
			}
		case cmdRead:
			if _, err := r.f.ReadAt(buf[:n], off); err != nil {
				return err
			}
			if err := r.simpleReply(cookie, 0, buf[:n]); err != nil {
				return err
			}
		case cmdWrite:
			if err := r.write(c, cookie, off, buf[:n]); err != nil {
				return err
			}
		default:
			return fmt.Errorf("command %d", typ)
		}
	}
}

// write reads a write's payload into p, and ships and writes it as the
// mode says.
func (r *relay) write(c net.Conn, cookie uint64, off int64, p []byte) error {
	if r.mode == "sa" {
		if _, err := io.ReadFull(c, p); err != nil {
			return err
		}
		if _, err := r.f.WriteAt(p, off); err != nil {
			return err
		}
		return r.simpleReply(cookie, 0, nil)
	}
	w := &pending{cookie: cookie}
	w.left.Store(2)
	r.mu.Lock()
	r.waits = append(r.waits, w)
	r.mu.Unlock()
	piece := len(p)
	if r.mode == "cut" {
		piece = r.piece
	}
	got, sent := 0, 0
	for sent < len(p) {
		for got < len(p) && got-sent < piece {
			k, err := c.Read(p[got:])
			if err != nil {
				return err
			}
			got += k
		}
		if err := r.send(p[sent:got], got == len(p)); err != nil {
			return err
		}
		if _, err := r.f.WriteAt(p[sent:got], off+int64(sent)); err != nil {
			return err
		}
		sent = got
	}
	if w.left.Add(-1) == 0 {
		return r.simpleReply(cookie, 0, nil)
	}
	return nil
}

// send writes one frame to the receiver (only the reader sends).
func (r *relay) send(p []byte, last bool) error {
	out := r.out[:fhead+len(p)+gmac.TagSize]
	binary.LittleEndian.PutUint64(out, r.seq)
	binary.LittleEndian.PutUint32(out[8:], uint32(len(p)))
	l := uint32(0)
	if last {
		l = 1
	}
	binary.LittleEndian.PutUint32(out[12:], l)
	copy(out[fhead:], p)
	binary.LittleEndian.PutUint64(r.nonce, r.seq)
	r.mac.Tag(out[fhead+len(p):fhead+len(p)], r.nonce, out[:fhead+len(p)])
	r.seq++
	_, err := r.peer.Write(out)
	return err
}

// answers reads the receiver's answers, one per write, in order.
func (r *relay) answers() {
	var a [8]byte
	for {
		if _, err := io.ReadFull(r.peer, a[:]); err != nil {
			return
		}
		r.mu.Lock()
		w := r.waits[0]
		r.waits = r.waits[1:]
		r.mu.Unlock()
		if w.left.Add(-1) == 0 {
			if err := r.simpleReply(w.cookie, 0, nil); err != nil {
				return
			}
		}
	}
}

func receive(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	lf := os.NewFile(3, "listener")
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return err
	}
	s, err := l.Accept()
	l.Close()
	if err != nil {
		return err
	}
	defer s.Close()
	mac, err := gmac.New(key)
	if err != nil {
		return err
	}
	in := make([]byte, fhead+maxData+gmac.TagSize)
	nonce := make([]byte, gmac.NonceSize)
	var off int64
	var ack [8]byte
	for {
		if _, err := io.ReadFull(s, in[:fhead]); err != nil {
			return err
		}
		seq := binary.LittleEndian.Uint64(in)
		n := int(binary.LittleEndian.Uint32(in[8:]))
		last := binary.LittleEndian.Uint32(in[12:]) == 1
		if n > maxData {
			return fmt.Errorf("frame of %d bytes", n)
		}
		if _, err := io.ReadFull(s, in[fhead:fhead+n+gmac.TagSize]); err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(nonce, seq)
		if err := mac.Check(nonce, in[fhead+n:fhead+n+gmac.TagSize], in[:fhead+n]); err != nil {
			return fmt.Errorf("frame %d: %w", seq, err)
		}
		if off+int64(n) > size {
			off = 0
		}
		if _, err := f.WriteAt(in[fhead:fhead+n], off); err != nil {
			return err
		}
		off += int64(n)
		if last {
			binary.LittleEndian.PutUint64(ack[:], seq)
			if _, err := s.Write(ack[:]); err != nil {
				return err
			}
		}
	}
}
