package protocol

import (
	"errors"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingConn counts the bytes read from it.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// The review's attack: many connections, each announcing a big frame
// before authenticating, once took a node from 17 MB to 502 MB (two 256
// KiB buffers and up to 1 MiB of payload each). Now each connection that
// announces the largest frame allowed before authentication and sends all
// but its last byte costs a few KiB, and one announcing more is dropped at
// once.
func TestPreAuthMemoryBounded(t *testing.T) {
	const conns = 240
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var read atomic.Int64
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	wg.Go(func() {
		for range conns {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(30 * time.Second))
				_, err := Accept(NewConn(countingConn{nc, &read}), validHello(2, "beta"), []byte("s3cret-s3cret"), nil)
				errs <- err
			})
		}
	})

	refuse := rawFrame(Version, TypeRefuse, make([]byte, MaxPreAuthPayload))
	hello := validHello(1, "alpha")
	hello.Name = strings.Repeat("a", MaxNameLen)
	hello.Resource = hello.Name
	bigHello := rawFrame(Version, TypeHello, hello.Append(nil))
	if len(bigHello) != HeaderSize+MaxHelloSize+TrailerSize {
		t.Fatalf("Hello of %d bytes, want the largest, %d", len(bigHello)-HeaderSize-TrailerSize, MaxHelloSize)
	}
	huge := rawFrame(Version, TypeHello, hello.Append(nil))
	putHeader(huge, &Header{Magic: Magic, Version: Version, Type: TypeHello, PayloadLen: MaxPayload, RawLen: MaxPayload})

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var sent int64
	clients := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
		wg.Wait()
	}()
	hugeOnes := 0
	for i := range conns {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, nc)
		var b []byte
		switch i % 4 {
		case 0, 1:
			b = refuse[:len(refuse)-1]
		case 2:
			b = bigHello[:len(bigHello)-1]
		case 3:
			// More than allowed: refused on its header, and closed.
			b = append(huge[:HeaderSize:HeaderSize], make([]byte, 64<<10)...)
			hugeOnes++
		}
		if _, err := nc.Write(b); err != nil {
			t.Fatal(err)
		}
		if i%4 != 3 {
			sent += int64(len(b))
		}
	}
	// The refused ones end at once, with ErrCorrupt.
	for range hugeOnes {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("a 1 MiB frame announced before authentication: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("connections announcing 1 MiB were not refused")
		}
	}
	// Wait until the listener read every byte the others sent: each now
	// waits for its frame's last byte.
	deadline := time.Now().Add(20 * time.Second)
	for read.Load() < sent {
		if time.Now().After(deadline) {
			t.Fatalf("listener read %d of %d bytes", read.Load(), sent)
		}
		time.Sleep(10 * time.Millisecond)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	waiting := int64(conns - hugeOnes)
	held := int64(after.HeapInuse+after.StackInuse) - int64(before.HeapInuse+before.StackInuse)
	per := held / waiting
	t.Logf("%d connections waiting mid-frame before authentication: %d KiB held in all, %d bytes each (heap and goroutine stack, both ends)",
		waiting, held>>10, per)
	// Before: 512 KiB of buffers each, plus the announced payload.
	if per > 32<<10 {
		t.Fatalf("each unauthenticated connection holds %d bytes, want < 32 KiB", per)
	}
	select {
	case err := <-errs:
		t.Fatalf("a connection ended early: %v", err)
	default:
	}
}
