//go:build ignore

// pairfloor is the second copy of a replicated 1 MiB write and nothing
// else: a sender process paces frames of 1 MiB (a GMAC tag over each, as
// repd's frames carry) over loopback TCP to a receiver process, which
// checks the tag, pwrites the data sequentially into a file (wrapping at
// its size) and answers each frame with 8 bytes; at most -depth frames are
// unanswered. Run beside fio against a standalone repd, both paced to the
// same rate, it asks whether this machine can do a standalone write and a
// bare copy of it at that rate at all: no coordination between the two,
// no journal, no waiting for one before the other. It prints the copies a
// second it reached and both processes' CPU per copy. A study tool, not
// the bench (root not needed; from the module root):
//
//	go run ./bench/results/2026-12-07-vm-session22/pairfloor.go -rate 1500 -secs 12 -file /var/tmp/pf.img
//
// With -serve it is instead the least a replicating NBD server can be:
// repd's nbd.Server over a Device that, under -mode C, sends each write
// (as one frame with its tag) to the same receiver process, pwrites it
// and waits for the receiver's answer before completing it; under -mode
// A it completes after the pwrite and leaves the frame to a sender
// goroutine (at most -depth frames queued); under -mode sa it only
// pwrites. No journal, no activity log, no bitmap, no barriers:
//
//	go run ./bench/results/2026-12-07-vm-session22/pairfloor.go -serve unix:/tmp/relay.sock -mode C -file /var/tmp/relay.img
package main

import (
	"context"
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
	"time"

	"github.com/repd/repd/bench/internal/procfs"
	"github.com/repd/repd/internal/gmac"
	"github.com/repd/repd/nbd"
)

const (
	dataLen = 1 << 20
	head    = 8
	frame   = head + dataLen + gmac.TagSize
)

var key = make([]byte, 32)

func main() {
	if p := os.Getenv("PAIRFLOOR_RECV"); p != "" {
		// The sender closing with answers unread ends it too.
		if err := receive(p); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			fmt.Fprintln(os.Stderr, "receiver:", err)
			os.Exit(1)
		}
		return
	}
	rate := flag.Float64("rate", 1000, "copies a second (0: as fast as it goes)")
	secs := flag.Float64("secs", 10, "seconds to run")
	depth := flag.Int("depth", 8, "frames unanswered at most")
	file := flag.String("file", "/var/tmp/pairfloor.img", "the receiver's file")
	size := flag.Int64("size", 512<<20, "its size")
	serve := flag.String("serve", "", "serve NBD at unix:PATH instead (see above)")
	mode := flag.String("mode", "C", "with -serve: sa, A or C")
	flag.Parse()
	if *serve != "" {
		if err := relay(*serve, *mode, *depth, *file, *size); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if err := run(*rate, *secs, *depth, *file, *size); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// prefill makes file size bytes of data.
func prefill(file string, size int64) ([]byte, error) {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, dataLen)
	for i := range buf {
		buf[i] = byte(i*7 + i>>11)
	}
	for off := int64(0); off < size; off += dataLen {
		if _, err := f.WriteAt(buf, off); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// receiver starts the receiving process on file and connects to it.
func receiver(file string) (*exec.Cmd, net.Conn, error) {
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		return nil, nil, err
	}
	lf, _ := l.(*net.TCPListener).File()
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "PAIRFLOOR_RECV="+file)
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	lf.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	l.Close()
	if err != nil {
		cmd.Process.Kill()
		return nil, nil, err
	}
	return cmd, c, nil
}

func run(rate, secs float64, depth int, file string, size int64) error {
	buf, err := prefill(file, size)
	if err != nil {
		return err
	}
	defer os.Remove(file)
	cmd, c, err := receiver(file)
	if err != nil {
		return err
	}
	mac, err := gmac.New(key)
	if err != nil {
		return err
	}
	var acked atomic.Int64
	slots := make(chan struct{}, depth)
	ackErr := make(chan error, 1)
	go func() {
		a := make([]byte, 8)
		for {
			if _, err := io.ReadFull(c, a); err != nil {
				ackErr <- err
				return
			}
			acked.Add(1)
			<-slots
		}
	}()
	out := make([]byte, frame)
	copy(out[head:], buf)
	nonce := make([]byte, gmac.NonceSize)
	rc0, _ := procfs.CPU(cmd.Process.Pid)
	sc0 := procfs.SelfCPU()
	t0 := time.Now()
	end := t0.Add(time.Duration(secs * float64(time.Second)))
	var sent int64
	for time.Now().Before(end) {
		if rate > 0 {
			// Send copy k at t0 + k/rate.
			due := t0.Add(time.Duration(float64(sent) / rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		slots <- struct{}{}
		binary.LittleEndian.PutUint64(out, uint64(sent))
		out[head] = byte(sent) // a different frame each time
		binary.LittleEndian.PutUint64(nonce, uint64(sent))
		mac.Tag(out[head+dataLen:head+dataLen], nonce, out[:head+dataLen])
		if _, err := c.Write(out); err != nil {
			return err
		}
		sent++
	}
	el := time.Since(t0).Seconds()
	n := acked.Load()
	rc1, _ := procfs.CPU(cmd.Process.Pid)
	sc1 := procfs.SelfCPU()
	c.Close()
	cmd.Wait()
	select {
	case err := <-ackErr:
		if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			return err
		}
	default:
	}
	fmt.Printf("pairfloor rate %.0f: %.0f copies/s (%d in %.2f s), CPU per copy: sender %.1f µs, receiver %.1f µs\n",
		rate, float64(n)/el, n, el, float64((sc1-sc0).Microseconds())/float64(sent), float64((rc1-rc0).Microseconds())/float64(n))
	return nil
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
	size := st.Size() / dataLen * dataLen
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
	in := make([]byte, frame)
	nonce := make([]byte, gmac.NonceSize)
	ack := make([]byte, 8)
	var off int64
	for {
		if _, err := io.ReadFull(s, in); err != nil {
			return err
		}
		seq := binary.LittleEndian.Uint64(in)
		binary.LittleEndian.PutUint64(nonce, seq)
		if err := mac.Check(nonce, in[head+dataLen:], in[:head+dataLen]); err != nil {
			return fmt.Errorf("frame %d: %w", seq, err)
		}
		if _, err := f.WriteAt(in[head:head+dataLen], off); err != nil {
			return err
		}
		off = (off + dataLen) % size
		binary.LittleEndian.PutUint64(ack, seq)
		if _, err := s.Write(ack); err != nil {
			return err
		}
	}
}

// relayDev is the Device of -serve.
type relayDev struct {
	f     *os.File
	size  int64
	mode  string
	c     net.Conn
	mac   *gmac.MAC
	mu    sync.Mutex // the connection's writes, seq, waits
	seq   uint64
	waits []chan struct{} // C: one per frame sent, in order; A: nil entries
	queue chan []byte     // A: frames for the sender
	out   []byte
	nonce []byte
}

func relay(addr, mode string, depth int, file string, size int64) error {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		return fmt.Errorf("-serve %q: want unix:PATH", addr)
	}
	if _, err := prefill(file, size); err != nil {
		return err
	}
	defer os.Remove(file)
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	d := &relayDev{f: f, size: size, mode: mode, out: make([]byte, frame), nonce: make([]byte, gmac.NonceSize)}
	if mode != "sa" {
		peerFile := file + ".peer"
		if _, err := prefill(peerFile, size); err != nil {
			return err
		}
		defer os.Remove(peerFile)
		cmd, c, err := receiver(peerFile)
		if err != nil {
			return err
		}
		defer cmd.Wait()
		defer c.Close()
		d.c = c
		if d.mac, err = gmac.New(key); err != nil {
			return err
		}
		go d.acks()
		if mode == "A" {
			d.queue = make(chan []byte, depth)
			go d.sender()
		}
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := &nbd.Server{Exports: []nbd.Export{{Name: "bench", Device: d}}}
	err = srv.Serve(ctx, l)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (d *relayDev) Size() int64 { return d.size }

func (d *relayDev) ReadAt(ctx context.Context, p []byte, off int64) error {
	_, err := d.f.ReadAt(p, off)
	return err
}

func (d *relayDev) Flush(ctx context.Context) error { return d.f.Sync() }

// send writes one frame of p (at most 1 MiB) to the receiver; d.mu held.
func (d *relayDev) send(p []byte) error {
	out := d.out[:head+len(p)+gmac.TagSize]
	binary.LittleEndian.PutUint64(out, d.seq)
	copy(out[head:], p)
	binary.LittleEndian.PutUint64(d.nonce, d.seq)
	d.mac.Tag(out[head+len(p):head+len(p)], d.nonce, out[:head+len(p)])
	d.seq++
	_, err := d.c.Write(out)
	return err
}

func (d *relayDev) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if len(p) != dataLen {
		// The receiver takes 1 MiB frames only; fio's prefill and job
		// write 1 MiB.
		_, err := d.f.WriteAt(p, off)
		return err
	}
	var wait chan struct{}
	switch d.mode {
	case "C":
		wait = make(chan struct{})
		d.mu.Lock()
		d.waits = append(d.waits, wait)
		err := d.send(p)
		d.mu.Unlock()
		if err != nil {
			return err
		}
	case "A":
		d.queue <- append([]byte(nil), p...)
	}
	if _, err := d.f.WriteAt(p, off); err != nil {
		return err
	}
	if wait != nil {
		<-wait
	}
	return nil
}

func (d *relayDev) sender() {
	for p := range d.queue {
		d.mu.Lock()
		d.waits = append(d.waits, nil)
		err := d.send(p)
		d.mu.Unlock()
		if err != nil {
			fmt.Fprintln(os.Stderr, "send:", err)
			os.Exit(1)
		}
	}
}

func (d *relayDev) acks() {
	a := make([]byte, 8)
	for {
		if _, err := io.ReadFull(d.c, a); err != nil {
			return
		}
		d.mu.Lock()
		w := d.waits[0]
		d.waits = d.waits[1:]
		d.mu.Unlock()
		if w != nil {
			close(w)
		}
	}
}
