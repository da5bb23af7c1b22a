package replica

import (
	"bytes"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Connections that fail their handshake at once (garbage instead of a
// Hello, or instead of a TLS ClientHello), and connections refused because
// too many handshakes are in progress from their address, come faster
// than a thousand a second from anyone who can reach the peer port. The
// node logs at most a line a second of each kind, and the next line
// counts those it left out. (Before: a line per connection.)
func TestPeerRefusalLogLimited(t *testing.T) {
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"plain", false}, {"TLS", true}} {
		t.Run(tc.name, func(t *testing.T) {
			var pki *testPKI
			if tc.tls {
				pki = newTestPKI(t, "r0 CA")
			}
			c := newCluster(t, 2, func(_ int, cfg *Config) {
				if tc.tls {
					cfg.TLS = pki.config(t, cfg.Self.Name)
				}
			})
			addr := c.nodes[0].cfg.Self.Addr // alpha's listener: its peer dials out
			garbage := bytes.Repeat([]byte{0xff}, 64)
			dial := func(src byte) net.Conn {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, src)}, Timeout: time.Second}
				nc, err := d.Dial("tcp", addr)
				if err != nil {
					return nil
				}
				return nc
			}
			refusals := func() []string {
				var found []string
				for l := range strings.Lines(c.logs.String()) {
					if strings.Contains(l, "at=alpha") && strings.Contains(l, "refused incoming peer connection") {
						found = append(found, l)
					}
				}
				return found
			}

			// Eight idle handshakes from 127.0.0.3 take its share; every
			// further connection from there is refused as too many.
			for range 8 {
				if nc := dial(3); nc != nil {
					defer nc.Close()
				}
			}
			time.Sleep(100 * time.Millisecond)
			const flood = 1500 * time.Millisecond
			start := time.Now()
			var attempts atomic.Int64
			var wg sync.WaitGroup
			for _, src := range []byte{2, 3} {
				wg.Go(func() {
					for time.Since(start) < flood {
						nc := dial(src)
						if nc == nil {
							continue
						}
						attempts.Add(1)
						if src == 2 {
							// A handshake that fails at once.
							nc.SetDeadline(time.Now().Add(time.Second))
							nc.Write(garbage)
							nc.Read(make([]byte, 1))
						}
						nc.Close()
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			time.Sleep(200 * time.Millisecond) // the last refusals are logged
			lines := refusals()
			// A line a second of each kind, the first at once.
			most := 2 * (1 + int(time.Since(start)/time.Second))
			t.Logf("%d connections in %v: %d log lines", attempts.Load(), elapsed.Round(time.Millisecond), len(lines))
			for _, l := range lines {
				t.Logf("  %s", strings.TrimSpace(l))
			}
			if attempts.Load() < 200 {
				t.Fatalf("the flood made only %d connections", attempts.Load())
			}
			if len(lines) > most {
				t.Fatalf("%d refusal lines in %v, want at most %d", len(lines), elapsed.Round(time.Millisecond), most)
			}

			// A second later, the next refusal's line counts those left out.
			time.Sleep(time.Second)
			if nc := dial(2); nc != nil {
				nc.SetDeadline(time.Now().Add(time.Second))
				nc.Write(garbage)
				nc.Read(make([]byte, 1))
				nc.Close()
			}
			re := regexp.MustCompile(`suppressed_since_last_log=(\d+)`)
			var left int
			waitFor(t, 5*time.Second, "a refusal line counting those left out", func() bool {
				left = 0
				for _, l := range refusals() {
					if m := re.FindStringSubmatch(l); m != nil {
						k, _ := strconv.Atoi(m[1])
						left += k
					}
				}
				return left > 0
			})
			t.Logf("lines count %d refusals left out", left)
		})
	}
}
