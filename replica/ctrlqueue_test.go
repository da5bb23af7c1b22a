package replica

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/repd/repd/protocol"
)

// ctrlQueued is what the session's control queue holds now: frames,
// the bytes their payloads hold (capacity), with those of the batch the
// writer took out and is writing, and the bytes the bound counted for
// them.
func ctrlQueued(s *session) (msgs int, held, counted int64) {
	s.ctrlMu.Lock()
	defer s.ctrlMu.Unlock()
	for _, m := range s.ctrl {
		held += int64(cap(m.payload))
	}
	return len(s.ctrl), held + s.ctrlSending, s.ctrlBytes + s.ctrlSending
}

// An authenticated peer that asks for large control answers and never
// reads them makes the node fail the session at the control queue's byte
// bound (maxCtrlBytes), well before its frame bound, and the queue never
// holds more than the bound in payload buffers.
//
// The answer is a VerifyReply: the fake sends Verify frames of 1 MiB whose
// sums match every other block of alpha's (zero) device, so each answer
// lists 128 one-block mismatches, a payload of 2,068 bytes that
// Mismatches.Append grows into a buffer of 3,072. The frames ask for one
// answer each in the write sequence; 32 MiB of answers are about 11,000 to
// 16,000 of them, a quarter of maxCtrlMsgs. Halfway, the fake reads
// until alpha's writer has taken the nearly full queue out to write it,
// then stops again: the batch being written counts against the bound.
func TestCtrlQueueBytesBounded(t *testing.T) {
	// Quiet: every mismatch is a Warn line. Timeout: alpha's blocked
	// flush to the fake must not end the session before the bound does.
	quiet := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError}))
	n, conn, closeConn := fakePeerWith(t, func(c *Config) {
		c.Logger = quiet
		c.Timeout = 2 * time.Minute
	})
	defer closeConn()
	const gran = 4096
	batch := int64(protocol.MaxData)
	zero := blake3.Sum256(make([]byte, gran))
	sums := make([][protocol.SumSize]byte, batch/gran)
	for i := range sums {
		if i%2 == 0 {
			sums[i] = zero
		} else {
			sums[i] = [protocol.SumSize]byte{1}
		}
	}
	// A Verify per megabyte of the device, round and round: those of
	// one range wait for each other in alpha's applier, the others run
	// at once.
	var frames [][]byte
	for off := int64(0); off+batch <= testSize; off += batch {
		h := protocol.Hashes{Off: uint64(off), Len: uint64(batch), Sums: sums}
		frames = append(frames, h.Append(nil))
	}

	var sess *session
	n.mu.Lock()
	for _, p := range n.peers {
		if p.cfg.Name == "beta" {
			sess = p.sess
		}
	}
	n.mu.Unlock()
	if sess == nil {
		t.Fatal("no session with beta")
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent int
	var sendErr error
	wg.Add(1)
	go func() { // the attack: Verify after Verify, reading nothing
		defer wg.Done()
		for seq := uint64(1); seq <= 4*maxCtrlMsgs; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			err := conn.W.WriteFrame(protocol.TypeVerify, 0, seq, frames[int(seq)%len(frames)], nil)
			if err == nil && seq%16 == 0 {
				err = conn.Flush(time.Minute)
			}
			if err != nil {
				sendErr = err
				return
			}
			sent++
		}
	}()
	// The second half of the attack: once the queue is nearly full, read
	// (and throw away) just enough for alpha's writer to finish what it
	// was writing and take the full queue out, then stop reading again,
	// so that the queue fills up a second time behind a writer blocked
	// on the first. Unless the taken batch still counts, alpha holds
	// both.
	var draining, drained atomic.Bool
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if !draining.Load() {
				time.Sleep(time.Millisecond)
				continue
			}
			conn.NetConn().SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := conn.NetConn().Read(buf); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
		}
	}()
	var peakMsgs int
	var peakHeld, peakCounted, peakSending int64
	watch := func() {
		m, held, counted := ctrlQueued(sess)
		sess.ctrlMu.Lock()
		sending := sess.ctrlSending
		sess.ctrlMu.Unlock()
		if held > peakHeld {
			peakMsgs, peakHeld, peakCounted = m, held, counted
		}
		peakSending = max(peakSending, sending)
		switch {
		case !drained.Load() && !draining.Load() && counted >= maxCtrlBytes*3/4:
			draining.Store(true)
		case draining.Load() && sending >= maxCtrlBytes/2:
			draining.Store(false)
			drained.Store(true)
		}
	}
	start := time.Now()
	deadline := start.Add(3 * time.Minute)
	for sess.ctx.Err() == nil {
		if time.Now().After(deadline) {
			close(stop)
			closeConn()
			wg.Wait()
			t.Fatalf("the session still runs after %v: %d Verify frames sent; queue peaked at %d frames, %d bytes held", time.Since(start), sent, peakMsgs, peakHeld)
		}
		watch()
		time.Sleep(time.Millisecond)
	}
	close(stop)
	closeConn()
	wg.Wait()
	waitFor(t, 10*time.Second, "the session's error in the status", func() bool {
		return peerState(n, "beta").LastError != ""
	})
	lastErr := peerState(n, "beta").LastError
	t.Logf("session failed after %v and %d Verify frames: %s", time.Since(start).Round(time.Millisecond), sent, lastErr)
	t.Logf("control queue peaked at %d frames holding %d bytes of payload buffers (%.1f MiB) with those being written, counted %d (bound %d bytes, %d frames); the writer took out %d bytes at once",
		peakMsgs, peakHeld, float64(peakHeld)/(1<<20), peakCounted, maxCtrlBytes, maxCtrlMsgs, peakSending)
	if sendErr != nil && !errors.Is(sendErr, net.ErrClosed) && !isConnReset(sendErr) {
		t.Logf("the fake stopped sending with %v", sendErr)
	}
	if !strings.Contains(lastErr, "does not read") {
		t.Fatalf("the session failed with %q, not on the control queue's bound", lastErr)
	}
	if peakMsgs >= maxCtrlMsgs/2 {
		t.Fatalf("the queue reached %d frames: the frame bound, not the byte bound, was tested", peakMsgs)
	}
	if peakHeld > maxCtrlBytes {
		t.Fatalf("the control queue held %d bytes of payload buffers, over its %d-byte bound (counted %d)", peakHeld, maxCtrlBytes, peakCounted)
	}
	if peakCounted < peakHeld {
		t.Fatalf("the bound counted %d bytes for payload buffers of %d", peakCounted, peakHeld)
	}
	if peakSending < maxCtrlBytes/2 {
		t.Fatalf("the writer took out at most %d bytes at once: the attack did not make it take a full queue", peakSending)
	}
	if peakHeld < maxCtrlBytes*7/8 {
		t.Fatalf("the queue peaked at %d bytes: the attack did not reach the %d-byte bound", peakHeld, maxCtrlBytes)
	}
}
