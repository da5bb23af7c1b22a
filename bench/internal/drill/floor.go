package drill

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/repd/repd/bench/internal/procfs"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/target"
	"github.com/repd/repd/internal/durable"
	"github.com/repd/repd/internal/gmac"
)

// drillFloor measures result.FloorResult on a fresh sparse file of size bytes in
// env.Dir (written once over before measuring, as the nodes' files are by
// the time a job runs).
func drillFloor(ctx context.Context, env target.Env) result.FloorResult {
	var r result.FloorResult
	if err := floor(ctx, env, &r); err != nil {
		r.Error = err.Error()
	}
	return r
}

func floor(ctx context.Context, env target.Env, r *result.FloorResult) error {
	size := env.Size &^ (1<<20 - 1)
	if size < 64<<20 {
		return fmt.Errorf("device size %d: the floor drill needs at least 64 MiB", env.Size)
	}
	path := filepath.Join(env.Dir, "floor.img")
	f, remove, err := scratchFile(path)
	if err != nil {
		return err
	}
	defer remove()
	if err := f.Truncate(size); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	blocks := size / 4096
	block := func() int64 { return rng.Int64N(blocks) * 4096 }
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	// Write every block once in 4 KiB pieces, then time a second pass.
	for i := int64(0); i < blocks; i++ {
		if _, err := f.WriteAt(buf[:4096], i*4096); err != nil {
			return err
		}
	}
	n := int(min(blocks, 200000))
	c0 := procfs.SelfCPU()
	for range n {
		if _, err := f.WriteAt(buf[:4096], block()); err != nil {
			return err
		}
	}
	r.PwriteUs4K = float64((procfs.SelfCPU() - c0).Nanoseconds()) / 1e3 / float64(n)
	if ctx.Err() != nil {
		return ctx.Err()
	}

	// Through TCP: 4 KiB frames to random blocks.
	frames := int(min(4*blocks, 1<<20))
	us, err := floorTCP(ctx, 4096, frames, func(p []byte) error {
		_, err := f.WriteAt(p, block())
		return err
	})
	if err != nil {
		return fmt.Errorf("4 KiB: %w", err)
	}
	r.Us4K = us
	var off int64
	us, err = floorTCP(ctx, 1<<20, int(min(size>>20, 2048)), func(p []byte) error {
		_, err := f.WriteAt(p, off)
		off = (off + int64(len(p))) % size
		return err
	})
	if err != nil {
		return fmt.Errorf("1 MiB: %w", err)
	}
	r.Us1M = us
	r.RTTUs4K, err = floorRTT(ctx, 5000, func(p []byte) error {
		_, err := f.WriteAt(p, block())
		return err
	})
	if err != nil {
		return fmt.Errorf("round trip: %w", err)
	}
	r.RTTUs4KProcess, err = floorRTTProcess(ctx, 5000, path)
	if err != nil {
		return fmt.Errorf("round trip between processes: %w", err)
	}
	if r.MACUs4K, err = floorMAC(4096, 20000); err != nil {
		return err
	}
	if r.MACUs1M, err = floorMAC(1<<20, 200); err != nil {
		return err
	}
	// The database job's flushes: floor.img alone, then with a second
	// file like it (a Secondary's, on this machine's one disk).
	f2, remove2, err := scratchFile(filepath.Join(env.Dir, "floor-peer.img"))
	if err != nil {
		return err
	}
	defer remove2()
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f2.WriteAt(buf, off); err != nil {
			return err
		}
	}
	r.DatasyncUs, r.DatasyncSharedUs, err = floorFlush(ctx, []*os.File{f, f2}, size, 1500*time.Millisecond, 2)
	if err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

// scratchFile creates the file at path empty (truncating one left
// behind); remove closes and removes it.
func scratchFile(path string) (f *os.File, remove func(), err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, nil, err
	}
	return f, func() { f.Close(); os.Remove(path) }, nil
}

// dbWrite and dbPerFlush are the database job's (dbsync-16k-fsync8.fio):
// writes of 16 KiB at random places, a flush after every 8.
const dbWrite, dbPerFlush = 16 << 10, 8

// floorFlush times the disk's part of the database job's flushes: cycles
// of dbPerFlush writes of dbWrite bytes at random places in a file of size
// bytes, then fdatasync (as repd's flush of the file). It runs them on
// files[0] alone, then on every file of files at once, one goroutine each
// (as a Primary's flush and its Secondaries' run on one machine whose
// files share a disk), rounds times each, span each time, alternating so
// that the disk's drift falls on both. It returns the mean wall time of an
// fdatasync in µs, alone and shared. The files are synced first: what
// earlier steps left dirty is not counted.
func floorFlush(ctx context.Context, files []*os.File, size int64, span time.Duration, rounds int) (alone, shared float64, err error) {
	for _, f := range files {
		if err := durable.Datasync(f); err != nil {
			return 0, 0, err
		}
	}
	type tally struct {
		total time.Duration
		n     int
	}
	cycles := func(f *os.File, seed uint64, t *tally) error {
		rng := rand.New(rand.NewPCG(seed, 3))
		data := make([]byte, dbWrite)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		for end := time.Now().Add(span); time.Now().Before(end); {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			for range dbPerFlush {
				if _, err := f.WriteAt(data, rng.Int64N(size/dbWrite)*dbWrite); err != nil {
					return err
				}
			}
			t0 := time.Now()
			if err := durable.Datasync(f); err != nil {
				return err
			}
			t.total += time.Since(t0)
			t.n++
		}
		return nil
	}
	var one, all tally
	for round := range rounds {
		if err := cycles(files[0], uint64(round), &one); err != nil {
			return 0, 0, err
		}
		ts := make([]tally, len(files))
		errs := make(chan error, len(files))
		for i, f := range files {
			go func() { errs <- cycles(f, uint64(round*len(files)+i+100), &ts[i]) }()
		}
		for range files {
			if e := <-errs; e != nil && err == nil {
				err = e
			}
		}
		if err != nil {
			return 0, 0, err
		}
		for _, t := range ts {
			all.total += t.total
			all.n += t.n
		}
	}
	if one.n == 0 || all.n == 0 {
		return 0, 0, errors.New("no flush completed")
	}
	mean := func(t tally) float64 { return float64(t.total.Nanoseconds()) / 1e3 / float64(t.n) }
	return mean(one), mean(all), nil
}

// floorMAC returns the CPU time in µs to tag count frames of a write of n
// bytes and check their tags, per frame, the way repd's frame MAC does
// (protocol, "Authenticated frames"; internal/gmac, the same code):
// AES-256-GCM with no plaintext, the frame (a 32-byte header, a 16-byte
// head, the data) as additional data.
// A frame of 64 KiB or more gets a two-part tag there, over the same bytes
// plus a few dozen: the cost is the same.
func floorMAC(n, count int) (float64, error) {
	mac, err := gmac.New(make([]byte, 32))
	if err != nil {
		return 0, err
	}
	frame := make([]byte, 32+16+n)
	for i := range frame {
		frame[i] = byte(i * 7)
	}
	nonce := make([]byte, gmac.NonceSize)
	tag := make([]byte, 0, gmac.TagSize)
	c0 := procfs.SelfCPU()
	for i := range count {
		binary.LittleEndian.PutUint64(nonce, uint64(i))
		tag = mac.Tag(tag[:0], nonce, frame)
		if err := mac.Check(nonce, tag, frame); err != nil {
			return 0, fmt.Errorf("frame MAC: %w", err)
		}
	}
	return float64((procfs.SelfCPU() - c0).Nanoseconds()) / 1e3 / float64(count), nil
}

// loopback connects to a listener on loopback TCP whose one accepted
// connection serve handles in its own goroutine; done gets serve's result.
// The connection closes when ctx ends; close it when done with it.
func loopback(ctx context.Context, serve func(net.Conn) error) (c net.Conn, done <-chan error, err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	ch := make(chan error, 1)
	go func() {
		s, err := l.Accept()
		l.Close()
		if err != nil {
			ch <- err
			return
		}
		defer s.Close()
		ch <- serve(s)
	}()
	c, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		l.Close() // the accept fails and the goroutine ends
		return nil, nil, err
	}
	context.AfterFunc(ctx, func() { c.Close() })
	return c, ch, nil
}

// floorRTT makes count round trips over loopback TCP, one at a time: a
// 32-byte header and 4 KiB sent, applied on the receiving side (a goroutine
// of this process), an 8-byte answer read back. It returns the median round
// trip in µs.
func floorRTT(ctx context.Context, count int, apply func([]byte) error) (float64, error) {
	c, done, err := loopback(ctx, func(s net.Conn) error { return rttServe(s, apply) })
	if err != nil {
		return 0, err
	}
	defer c.Close()
	us, err := rttClient(c, count)
	if err != nil {
		return 0, err
	}
	c.Close()
	if err := <-done; err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		return 0, err
	}
	return us, nil
}

// rttHead and rttData make a round trip's frame.
const rttHead, rttData = 32, 4096

// rttServe answers round trips on s until it closes: each frame's data
// applied, then 8 bytes sent back.
func rttServe(s net.Conn, apply func([]byte) error) error {
	frame, ack := make([]byte, rttHead+rttData), make([]byte, 8)
	for {
		if _, err := io.ReadFull(s, frame); err != nil {
			return err
		}
		if err := apply(frame[rttHead:]); err != nil {
			return err
		}
		if _, err := s.Write(ack); err != nil {
			return err
		}
	}
}

// rttClient makes count round trips on c, one at a time, and returns the
// median in µs.
func rttClient(c net.Conn, count int) (float64, error) {
	frame, ack := make([]byte, rttHead+rttData), make([]byte, 8)
	rtts := make([]time.Duration, 0, count)
	for range count {
		t0 := time.Now()
		if _, err := c.Write(frame); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, ack); err != nil {
			return 0, err
		}
		rtts = append(rtts, time.Since(t0))
	}
	slices.Sort(rtts)
	return float64(rtts[len(rtts)/2].Nanoseconds()) / 1e3, nil
}

// FloorPeerEnv names the file a floor peer writes into: set, it makes this
// program the peer process of the floor drill's two-process round trip
// (FloorPeerMain), started by the drill itself (floorRTTProcess).
const FloorPeerEnv = "REPD_BENCH_FLOOR_PEER"

// FloorPeerMain is called first thing by a program that runs the floor
// drill (the bench, this package's tests): when FloorPeerEnv is set the
// program is the drill's peer process, serves (serveFloorPeer) and exits;
// otherwise it returns at once.
func FloorPeerMain() {
	if os.Getenv(FloorPeerEnv) == "" {
		return
	}
	if err := serveFloorPeer(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serveFloorPeer is the body of a floor peer process: it accepts one
// connection on the listener it inherited as file descriptor 3 and answers
// round trips on it (rttServe), writing each frame's data with pwrite at a
// random block of the file FloorPeerEnv names, until the connection closes.
func serveFloorPeer() error {
	path := os.Getenv(FloorPeerEnv)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("floor peer: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("floor peer: %w", err)
	}
	blocks := st.Size() / rttData
	if blocks == 0 {
		return fmt.Errorf("floor peer: %s holds no 4 KiB block", path)
	}
	lf := os.NewFile(3, "floor-listener")
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return fmt.Errorf("floor peer: listener: %w", err)
	}
	if tl, ok := l.(*net.TCPListener); ok {
		// The drill dials at once: a peer that never sees it stops.
		tl.SetDeadline(time.Now().Add(30 * time.Second))
	}
	s, err := l.Accept()
	l.Close()
	if err != nil {
		return fmt.Errorf("floor peer: accept: %w", err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	err = rttServe(s, func(p []byte) error {
		_, err := f.WriteAt(p, rng.Int64N(blocks)*rttData)
		return err
	})
	if errors.Is(err, io.EOF) {
		return nil
	}
	return fmt.Errorf("floor peer: %w", err)
}

// floorRTTProcess is floorRTT with the receiving side in a process of its
// own (this program again, as a floor peer writing into path): what a
// Secondary on the same machine is to a Primary, with the wake-ups of one
// process by another that a round trip within one Go process does not pay.
func floorRTTProcess(ctx context.Context, count int, path string) (float64, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	lf, err := l.(*net.TCPListener).File()
	addr := l.Addr().String()
	if err != nil {
		l.Close()
		return 0, err
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), FloorPeerEnv+"="+path)
	cmd.ExtraFiles = []*os.File{lf}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Start()
	lf.Close()
	if err != nil {
		l.Close()
		return 0, fmt.Errorf("start floor peer: %w", err)
	}
	// The listening socket stays open in the peer: connections made now
	// wait in its backlog until it accepts.
	c, err := net.Dial("tcp", addr)
	l.Close()
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return 0, err
	}
	us, rerr := rttClient(c, count)
	c.Close() // the peer sees EOF and exits
	if werr := cmd.Wait(); werr != nil && rerr == nil {
		rerr = fmt.Errorf("floor peer: %v: %s", werr, strings.TrimSpace(out.String()))
	}
	if rerr != nil {
		return 0, rerr
	}
	return us, nil
}

// floorTCP sends count frames of a 32-byte header and n bytes over loopback
// TCP, 64 frames per write (at most 4 MiB), and gives each frame's n bytes
// to apply on the receiving side; it returns the CPU time per frame of the
// whole process (both sides).
func floorTCP(ctx context.Context, n, count int, apply func([]byte) error) (float64, error) {
	const head = 32
	c, done, err := loopback(ctx, func(s net.Conn) error {
		frame := make([]byte, head+n)
		rb := make([]byte, max(512<<10, 2*len(frame)))
		have := 0
		for got := 0; got < count; {
			k, err := s.Read(rb[have:])
			if err != nil {
				return err
			}
			have += k
			i := 0
			for ; have-i >= len(frame) && got < count; i += len(frame) {
				if err := apply(rb[i+head : i+len(frame)]); err != nil {
					return err
				}
				got++
			}
			have = copy(rb, rb[i:have])
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	per := max(1, min(64, (4<<20)/(head+n)))
	batch := make([]byte, per*(head+n))
	c0 := procfs.SelfCPU()
	for sent := 0; sent < count; sent += per {
		k := min(per, count-sent)
		if _, err := c.Write(batch[:k*(head+n)]); err != nil {
			return 0, err
		}
	}
	if err := <-done; err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	return float64((procfs.SelfCPU() - c0).Nanoseconds()) / 1e3 / float64(count), nil
}
