package client_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/repd/repd/nbd/client"
)

// fake is the server side of one connection, scripted by a test to attack
// the client.
type fake struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

// attack runs script as the server of one connection on a loopback port and
// returns the address; the script's failures are reported, and the test
// waits for it at cleanup.
func attack(t *testing.T, script func(f *fake)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		f := &fake{t: t, conn: conn, r: bufio.NewReader(conn), w: bufio.NewWriterSize(conn, 1<<20)}
		defer func() {
			if v := recover(); v != nil && v != errStop {
				panic(v)
			}
		}()
		script(f)
		f.w.Flush()
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return l.Addr().String()
}

var errStop = errors.New("fake server: client went away")

func (f *fake) read(n int) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(f.r, b); err != nil {
		panic(errStop)
	}
	return b
}

func (f *fake) write(b ...[]byte) {
	for _, p := range b {
		f.w.Write(p)
	}
	if err := f.w.Flush(); err != nil {
		panic(errStop)
	}
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func (f *fake) greet() {
	f.write([]byte("NBDMAGICIHAVEOPT"), be16(3))
	f.read(4)
}

func (f *fake) option() (uint32, []byte) {
	h := f.read(16)
	return binary.BigEndian.Uint32(h[8:]), f.read(int(binary.BigEndian.Uint32(h[12:])))
}

func (f *fake) optReply(opt, typ uint32, data []byte) {
	f.write(be64(0x3e889045565a9), be32(opt), be32(typ), be32(uint32(len(data))), data)
}

// negotiate answers a well-behaved handshake: structured replies, the
// contexts asked for (ids 1, 2, ...), and an export of size bytes.
func (f *fake) negotiate(size uint64) {
	f.greet()
	ids := uint32(0)
	for {
		opt, data := f.option()
		switch opt {
		case 8: // STRUCTURED_REPLY
			f.optReply(opt, 1, nil)
		case 10: // SET_META_CONTEXT
			n := binary.BigEndian.Uint32(data)
			data = data[4+n:]
			q := binary.BigEndian.Uint32(data)
			data = data[4:]
			for range q {
				l := binary.BigEndian.Uint32(data)
				ids++
				f.optReply(opt, 4, append(be32(ids), data[4:4+l]...))
				data = data[4+l:]
			}
			f.optReply(opt, 1, nil)
		case 7: // GO
			f.optReply(opt, 3, append(append(be16(0), be64(size)...), be16(1|2)...))
			f.optReply(opt, 1, nil)
			return
		default:
			f.optReply(opt, 0x80000001, nil)
		}
	}
}

// request reads one transmission request.
func (f *fake) request() (cmd uint16, cookie, off uint64, n uint32) {
	h := f.read(28)
	return binary.BigEndian.Uint16(h[6:]), binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint64(h[16:]), binary.BigEndian.Uint32(h[24:])
}

// chunk writes a structured reply chunk header announcing length bytes,
// then payload (which may be shorter or longer than announced).
func (f *fake) chunk(flags, typ uint16, cookie uint64, length uint32, payload ...[]byte) {
	f.write(append([][]byte{be32(0x668e33ef), be16(flags), be16(typ), be64(cookie), be32(length)}, payload...)...)
}

func sized(parts ...[]byte) (uint32, []byte) {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return uint32(len(b)), b
}

// dialFake dials addr with a short deadline.
func dialFake(addr string, opts client.Options) (*client.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return client.Dial(ctx, "tcp", addr, opts)
}

// allocated runs fn and returns the bytes it (and anything running
// meanwhile) allocated.
func allocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

const hugeLen = 0xfffffff0

// Attacks during the handshake: each must fail Dial with an error naming
// what the server did, without allocating what it announced.
func TestHostileHandshake(t *testing.T) {
	cases := []struct {
		name   string
		script func(f *fake)
		opts   client.Options
		want   string
	}{
		{"option reply of 4 GiB", func(f *fake) {
			f.greet()
			opt, _ := f.option()
			f.write(be64(0x3e889045565a9), be32(opt), be32(1), be32(hugeLen))
		}, client.Options{}, "at most 65536"},
		{"endless NBD_REP_INFO", func(f *fake) {
			f.greet()
			f.option()
			f.optReply(8, 1, nil)
			f.option()
			for range client.MaxOptionReplies + 10 {
				f.optReply(7, 3, append(be16(99), make([]byte, 100)...))
			}
		}, client.Options{}, "more than 4096 NBD_REP_INFO"},
		{"endless NBD_REP_META_CONTEXT", func(f *fake) {
			f.greet()
			f.option()
			f.optReply(8, 1, nil)
			f.option()
			for i := range client.MaxOptionReplies + 10 {
				f.optReply(10, 4, append(be32(uint32(i)), fmt.Sprintf("x-fake:%d", i)...))
			}
		}, client.Options{MetaContexts: []string{"base:allocation"}}, "more than 4096 replies to NBD_OPT_SET_META_CONTEXT"},
		{"one context id for two contexts", func(f *fake) {
			f.greet()
			f.option()
			f.optReply(8, 1, nil)
			f.option()
			f.optReply(10, 4, append(be32(1), "base:allocation"...))
			f.optReply(10, 4, append(be32(1), "qemu:dirty-bitmap:a"...))
		}, client.Options{MetaContexts: []string{"base:allocation"}}, "context id 1 twice"},
		{"export of 2^64-1 bytes", func(f *fake) {
			f.greet()
			f.option()
			f.optReply(8, 1, nil)
			f.option()
			f.optReply(7, 3, append(append(be16(0), be64(1<<64-1)...), be16(1)...))
			f.optReply(7, 1, nil)
		}, client.Options{}, "exceeds 2^63-1"},
		{"GO acknowledged without the export's size", func(f *fake) {
			f.greet()
			f.option()
			f.optReply(8, 1, nil)
			f.option()
			f.optReply(7, 1, nil)
		}, client.Options{}, "without NBD_INFO_EXPORT"},
		{"reply to another option", func(f *fake) {
			f.greet()
			f.option()
			f.optReply(7, 1, nil)
		}, client.Options{}, "names NBD_OPT_GO"},
		{"not an NBD server", func(f *fake) {
			f.write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
		}, client.Options{}, "not NBDMAGIC"},
		{"oldstyle server", func(f *fake) {
			f.write([]byte("NBDMAGIC"), be64(0x00420281861253), be64(1<<20), be32(1), make([]byte, 124))
		}, client.Options{}, "oldstyle"},
		{"TLS refused: no downgrade", func(f *fake) {
			f.greet()
			if opt, _ := f.option(); opt != 5 {
				f.t.Errorf("first option %d, want STARTTLS", opt)
			}
			f.optReply(5, 0x80000001, nil)
			// The client must hang up rather than go on in plain text.
			if _, err := f.r.ReadByte(); err == nil {
				f.t.Error("client sent more after TLS was refused")
			}
		}, client.Options{TLS: &tls.Config{ServerName: "x"}}, "TLS was asked for"},
		{"block size constraints that break the rules", func(f *fake) {
			f.greet()
			f.option()
			f.optReply(8, 1, nil)
			f.option()
			f.optReply(7, 3, append(append(be16(3), be32(3)...), append(be32(4096), be32(1<<20)...)...))
		}, client.Options{}, "block size constraints"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := attack(t, tc.script)
			var err error
			n := allocated(func() { _, err = dialFake(addr, tc.opts) })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Dial: %v, want an error containing %q", err, tc.want)
			}
			if n > 8<<20 {
				t.Fatalf("Dial allocated %d bytes", n)
			}
			t.Logf("%v", err)
		})
	}
}

// A server that never answers: the context's deadline ends the dial.
func TestHostileSilence(t *testing.T) {
	addr := attack(t, func(f *fake) {
		f.greet()
		f.option()
		time.Sleep(2 * time.Second)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := client.Dial(ctx, "tcp", addr, client.Options{})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Fatalf("Dial to a silent server: %v after %v", err, time.Since(start))
	}
}

// Attacks in the transmission phase: each must fail the call with
// ErrProtocol, close the connection, and allocate nothing like what the
// server announced.
func TestHostileReplies(t *testing.T) {
	const size = 1 << 20
	read := func(c *client.Client) error { return c.Read(context.Background(), make([]byte, 64<<10), 0) }
	status := func(c *client.Client) error { _, err := c.BlockStatus(context.Background(), 0, 64<<10); return err }
	cases := []struct {
		name   string
		op     func(*client.Client) error
		script func(f *fake, cookie, off uint64, n uint32)
		want   string
	}{
		{"OFFSET_DATA of 4 GiB", read, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(1, 1, ck, hugeLen, be64(off))
		}, "OFFSET_DATA chunk of 4294967280 bytes"},
		{"OFFSET_DATA outside the request", read, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(1, 1, ck, 8+16, be64(off+uint64(n)-8), make([]byte, 16))
		}, "outside the read"},
		{"OFFSET_DATA at an offset that wraps", read, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(1, 1, ck, 8+16, be64(1<<64-8), make([]byte, 16))
		}, "outside the read"},
		{"overlapping chunks", read, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(0, 1, ck, 8+4096, be64(off), make([]byte, 4096))
			f.chunk(0, 2, ck, 12, be64(off+4000), be32(n-4000))
		}, "overlaps"},
		{"success with bytes missing", read, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(0, 1, ck, 8+4096, be64(off), make([]byte, 4096))
			f.chunk(1, 0, ck, 0)
		}, "not sent"},
		{"a reply to no request", read, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(1, 2, ck+1000, 12, be64(off), be32(n))
		}, "not in flight"},
		{"a simple reply with data after structured replies", read, func(f *fake, ck, off uint64, n uint32) {
			f.write(be32(0x67446698), be32(0), be64(ck), make([]byte, n))
		}, "simple reply"},
		{"unknown chunk type", read, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(1, 77, ck, 0)
		}, "unknown reply chunk type"},
		{"bad reply magic", read, func(f *fake, ck, off uint64, n uint32) {
			f.write(be32(0xdeadbeef), make([]byte, 40))
		}, "reply magic"},
		{"a million one-byte fragments", read, func(f *fake, ck, off uint64, n uint32) {
			for i := uint64(0); i < client.MaxFragments+1; i++ {
				f.w.Write(be32(0x668e33ef))
				f.w.Write(be16(0))
				f.w.Write(be16(1))
				f.w.Write(be64(ck))
				f.w.Write(be32(9))
				f.w.Write(be64(off + 2*i))
				f.w.WriteByte(7)
			}
			f.write()
		}, "separate pieces"},
		{"error chunk of 4 GiB", read, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(1, 0x8001, ck, hugeLen, be32(5))
		}, "error chunk of 4294967280 bytes"},
		{"error message longer than its chunk", read, func(f *fake, ck, off uint64, n uint32) {
			l, p := sized(be32(5), be16(60000), []byte("short"))
			f.chunk(1, 0x8001, ck, l, p)
		}, "message of 60000 bytes"},
		{"error offset outside the request", read, func(f *fake, ck, off uint64, n uint32) {
			l, p := sized(be32(5), be16(0), be64(off+uint64(n)))
			f.chunk(1, 0x8002, ck, l, p)
		}, "outside the request"},
		{"endless error chunks", read, func(f *fake, ck, off uint64, n uint32) {
			l, p := sized(be32(5), be16(0))
			for range 1100 {
				f.chunk(0, 0x8001, ck, l, p)
			}
		}, "more than 1024 error chunks"},
		{"BLOCK_STATUS chunk of 4 GiB", status, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(1, 5, ck, 4+8*((hugeLen-4)/8), be32(1))
		}, "BLOCK_STATUS chunk of"},
		{"BLOCK_STATUS for a context never negotiated", status, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(1, 5, ck, 12, be32(9), be32(n), be32(0))
		}, "context id 9"},
		{"BLOCK_STATUS extent of length 0", status, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(1, 5, ck, 20, be32(1), be32(4096), be32(0), be32(0), be32(0))
		}, "length 0"},
		{"BLOCK_STATUS describing more than asked", status, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(1, 5, ck, 28, be32(1), be32(n), be32(0), be32(4096), be32(1), be32(4096), be32(0))
		}, "more extents than"},
		{"BLOCK_STATUS twice for one context", status, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(0, 5, ck, 12, be32(1), be32(n), be32(0))
			f.chunk(1, 5, ck, 12, be32(1), be32(n), be32(0))
		}, "two BLOCK_STATUS chunks"},
		{"BLOCK_STATUS without the context", status, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(1, 0, ck, 0)
		}, "without extents"},
		{"OFFSET_DATA in reply to BLOCK_STATUS", status, func(f *fake, ck, off uint64, n uint32) {
			f.chunk(1, 1, ck, 8+16, be64(off), make([]byte, 16))
		}, "OFFSET_DATA chunk in the reply to block-status"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := attack(t, func(f *fake) {
				f.negotiate(size)
				_, ck, off, n := f.request()
				tc.script(f, ck, off, n)
				io.Copy(io.Discard, f.r) // until the client hangs up
			})
			c, err := dialFake(addr, client.Options{MetaContexts: []string{client.ContextAllocation}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var opErr error
			start := time.Now()
			n := allocated(func() { opErr = tc.op(c) })
			if !errors.Is(opErr, client.ErrProtocol) || !strings.Contains(opErr.Error(), tc.want) {
				t.Fatalf("got %v, want ErrProtocol containing %q", opErr, tc.want)
			}
			if n > 16<<20 || time.Since(start) > 5*time.Second {
				t.Fatalf("the attack cost %d bytes and %v", n, time.Since(start))
			}
			if err := read(c); !errors.Is(err, client.ErrProtocol) {
				t.Fatalf("the connection is still used after the violation: %v", err)
			}
			t.Logf("%v", opErr)
		})
	}
}

// Well-formed but unusual replies that the spec allows: chunks out of order,
// a final extent reaching past the range, an error chunk of an unknown type.
func TestUnusualReplies(t *testing.T) {
	addr := attack(t, func(f *fake) {
		f.negotiate(1 << 20)
		_, ck, off, n := f.request() // READ: second half first, as a hole
		half := n / 2
		f.chunk(0, 2, ck, 12, be64(off+uint64(half)), be32(n-half))
		f.chunk(0, 1, ck, 8+half, be64(off), make([]byte, half))
		f.chunk(1, 0, ck, 0)
		_, ck, off, n = f.request() // BLOCK_STATUS: the last extent overshoots
		f.chunk(1, 5, ck, 20, be32(1), be32(4096), be32(3), be32(1<<30), be32(0))
		_, ck, _, _ = f.request() // READ: an unknown error type fails just this request
		l, p := sized(be32(28), be16(4), []byte("full"))
		f.chunk(1, 0x80ff, ck, l, p)
		_, ck, off, n = f.request()
		f.chunk(1, 2, ck, 12, be64(off), be32(n))
	})
	c, err := dialFake(addr, client.Options{MetaContexts: []string{client.ContextAllocation}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 8192)
	if err := c.Read(context.Background(), buf, 4096); err != nil {
		t.Fatal(err)
	}
	st, err := c.BlockStatus(context.Background(), 0, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	want := []client.Extent{{Off: 0, Len: 4096, Flags: 3}, {Off: 4096, Len: 60 << 10, Flags: 0}}
	if got := st[client.ContextAllocation]; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("extents %+v, want %+v", got, want)
	}
	var ne *client.Error
	if err := c.Read(context.Background(), buf, 0); !errors.As(err, &ne) || ne.Errno != 28 || ne.Message != "full" {
		t.Fatalf("unknown error chunk type: %v", err)
	}
	if err := c.Read(context.Background(), buf, 0); err != nil {
		t.Fatalf("read after a server error: %v", err)
	}
}

// A server that knows no metadata contexts: the client goes on without
// them, and says so through HasMetaContext.
func TestServerWithoutMetaContexts(t *testing.T) {
	addr := attack(t, func(f *fake) {
		f.greet()
		for {
			opt, _ := f.option()
			switch opt {
			case 8:
				f.optReply(opt, 1, nil)
			case 7:
				f.optReply(opt, 3, append(append(be16(0), be64(1<<20)...), be16(1|2)...))
				f.optReply(opt, 1, nil)
				_, ck, off, n := f.request()
				f.chunk(1, 2, ck, 12, be64(off), be32(n))
				io.Copy(io.Discard, f.r)
				return
			default:
				f.optReply(opt, 0x80000001, nil)
			}
		}
	})
	c, err := dialFake(addr, client.Options{MetaContexts: []string{client.ContextAllocation}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.HasMetaContext(client.ContextAllocation) || len(c.MetaContexts()) != 0 {
		t.Fatalf("contexts %v from a server without them", c.MetaContexts())
	}
	if _, err := c.BlockStatus(context.Background(), 0, 4096); err == nil {
		t.Fatal("block status without contexts succeeded")
	}
	if err := c.Read(context.Background(), make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
}

// Extents pipelines its BLOCK_STATUS requests over consecutive 64 MiB
// pieces; a piece described only in part is asked about again from where
// its reply ends, and what the later replies of that round said is asked
// again too, so the walk stays in order and complete.
func TestExtentsPipelinedShortReply(t *testing.T) {
	const mib = 1 << 20
	const size = 300 * mib
	type asked struct{ off, n uint64 }
	got := make(chan []asked, 2)
	addr := attack(t, func(f *fake) {
		f.negotiate(size)
		round := func(k int, reply func(i int, ck, off uint64, n uint32)) {
			var a []asked
			var cks []uint64
			for range k {
				cmd, ck, off, n := f.request()
				if cmd != 7 {
					t.Errorf("command %d, want BLOCK_STATUS", cmd)
				}
				a = append(a, asked{off, uint64(n)})
				cks = append(cks, ck)
			}
			got <- a
			for i := range k {
				reply(i, cks[i], a[i].off, uint32(a[i].n))
			}
		}
		round(4, func(i int, ck, off uint64, n uint32) {
			if i == 1 { // 1 MiB of data, then nothing more said
				f.chunk(1, 5, ck, 12, be32(1), be32(mib), be32(0))
				return
			}
			f.chunk(1, 5, ck, 12, be32(1), be32(n), be32(3))
		})
		round(4, func(i int, ck, off uint64, n uint32) {
			f.chunk(1, 5, ck, 12, be32(1), be32(n), be32(3))
		})
	})
	c, err := dialFake(addr, client.Options{MetaContexts: []string{client.ContextAllocation}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var ext []client.Extent
	if err := c.Extents(context.Background(), client.ContextAllocation, 0, size, func(e client.Extent) error {
		ext = append(ext, e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []asked{{0, 64 * mib}, {64 * mib, 64 * mib}, {128 * mib, 64 * mib}, {192 * mib, 64 * mib}}
	if a := <-got; !slices.Equal(a, want) {
		t.Errorf("first round asked %v, want %v (four pieces at once)", a, want)
	}
	want = []asked{{65 * mib, 64 * mib}, {129 * mib, 64 * mib}, {193 * mib, 64 * mib}, {257 * mib, 43 * mib}}
	if a := <-got; !slices.Equal(a, want) {
		t.Errorf("second round asked %v, want %v (again from where the short reply ended)", a, want)
	}
	at := int64(0)
	for _, e := range ext {
		if e.Off != at {
			t.Fatalf("extents %+v: a gap or overlap at %d", ext, at)
		}
		wantFlags := uint32(3)
		if e.Off >= 64*mib && e.Off < 65*mib {
			wantFlags = 0
		}
		if e.Flags != wantFlags {
			t.Fatalf("extent %+v: flags %d, want %d", e, e.Flags, wantFlags)
		}
		at = e.End()
	}
	if at != size {
		t.Fatalf("extents end at %d, want %d", at, size)
	}
}
