package replica

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/repd/repd/protocol"
)

// A peer that asks again and again for the data of a write it was sent
// (DataReq), and reads nothing, makes the node queue at most one resend:
// the node accepts a request only on a link with dedup, for a write it may
// have sent as a DedupWrite, once per write and one at a time, as its own
// receiver asks; any other ends the session. The log gets at most a line.
// (Before, each request queued another resend of the write and logged a
// line: 1.7 million in 3 s.)
func TestDataReqFloodBounded(t *testing.T) {
	const frames = 200_000
	r := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 1<<20)
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	// Every other 4 KiB block zero: the shipper sends it as a DedupWrite.
	halfZero := make([]byte, 1<<20)
	for off := 0; off < len(halfZero); off += 8 << 10 {
		copy(halfZero[off:off+4096], random[off:])
	}
	for _, tc := range []struct {
		name  string
		dedup bool   // alpha's dedup index is on
		data  []byte // the write the requests name
		flag  bool   // it goes as a DedupWrite
		want  string // in the error that ends the session
	}{
		{"plain write, dedup off", false, random, false, "dedup is off on this link"},
		{"plain write, dedup on", true, random, false, "DataReq for write"},
		{"dedup write", true, halfZero, true, "DataReq for write"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &syncBuf{}
			n, conn, closeConn := fakePeerWith(t, func(cfg *Config) {
				cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
				if tc.dedup {
					cfg.DedupIndexBytes = 1 << 20
				}
			})
			defer closeConn()
			var wmu sync.Mutex // the fake's writes
			written := make(chan protocol.Frame, 1)
			go func() {
				for {
					f, err := conn.ReadFrame(0)
					if err != nil {
						return
					}
					switch f.Type {
					case protocol.TypePromoteReq:
						wmu.Lock()
						conn.Send(time.Second, protocol.TypePromoteReply, 0, f.Seq, nil, nil)
						wmu.Unlock()
					case protocol.TypeWrite:
						written <- protocol.Frame{Type: f.Type, Flags: f.Flags, Seq: f.Seq}
						return // the attack: read nothing more
					}
				}
			}()
			if err := n.NewCurrentUUID(true); err != nil {
				t.Fatal(err)
			}
			if err := n.Promote(true); err != nil {
				t.Fatal(err)
			}
			go n.WriteAt(context.Background(), tc.data, 0, false) // waits for beta's ack (never)
			var w protocol.Frame
			select {
			case w = <-written:
			case <-time.After(10 * time.Second):
				t.Fatal("alpha sent no write")
			}
			if got := w.Flags&protocol.FlagDedup != 0; got != tc.flag {
				t.Fatalf("write %d went with flags %#x, want FlagDedup %v", w.Seq, w.Flags, tc.flag)
			}
			p, _ := n.peerByName("beta")
			n.mu.Lock()
			s := p.sess
			n.mu.Unlock()
			sent, most := 0, 0
			for sent < frames {
				wmu.Lock()
				for range 4096 {
					conn.W.WriteFrame(protocol.TypeDataReq, 0, w.Seq, nil, nil)
					sent++
				}
				err := conn.Flush(time.Second)
				wmu.Unlock()
				s.dedup.mu.Lock()
				most = max(most, len(s.dedup.resend))
				s.dedup.mu.Unlock()
				if err != nil {
					break // alpha ended the session
				}
			}
			lines := strings.Count(logs.String(), "resending the data")
			t.Logf("%d DataReq for write %d sent: at most %d resends queued, %d log lines", sent, w.Seq, most, lines)
			if most > 1 {
				t.Errorf("%d resends of write %d queued", most, w.Seq)
			}
			if lines > 1 {
				t.Errorf("%d log lines for the requests of one write", lines)
			}
			waitFor(t, 10*time.Second, "the session ended on a DataReq", func() bool {
				return strings.Contains(logs.String(), tc.want)
			})
			t.Logf("the session ended: %s", lastLine(logs.String(), "peer disconnected"))
		})
	}
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lastLine is the last line of logs that contains what, "" if none.
func lastLine(logs, what string) string {
	found := ""
	for l := range strings.Lines(logs) {
		if strings.Contains(l, what) {
			found = strings.TrimSpace(l)
		}
	}
	return found
}
