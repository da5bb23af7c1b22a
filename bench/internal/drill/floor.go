package drill

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/repd/repd/bench/internal/procfs"
	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/bench/internal/target"
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
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	defer f.Close()
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
	return nil
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
// 32-byte header and 4 KiB sent, applied on the receiving side, an 8-byte
// answer read back. It returns the median round trip in µs.
func floorRTT(ctx context.Context, count int, apply func([]byte) error) (float64, error) {
	const head, n = 32, 4096
	c, done, err := loopback(ctx, func(s net.Conn) error {
		frame, ack := make([]byte, head+n), make([]byte, 8)
		for {
			if _, err := io.ReadFull(s, frame); err != nil {
				return err
			}
			if err := apply(frame[head:]); err != nil {
				return err
			}
			if _, err := s.Write(ack); err != nil {
				return err
			}
		}
	})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	frame, ack := make([]byte, head+n), make([]byte, 8)
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
	c.Close()
	if err := <-done; err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		return 0, err
	}
	slices.Sort(rtts)
	return float64(rtts[len(rtts)/2].Nanoseconds()) / 1e3, nil
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
