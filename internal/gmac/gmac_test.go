package gmac

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"testing"
)

// stdTag is crypto/cipher's tag of data: GCM's Seal with no plaintext.
func stdTag(t testing.TB, key, nonce, data []byte) []byte {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		t.Fatal(err)
	}
	return g.Seal(nil, nonce, nil, data)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestTagsMatchCryptoCipher compares the tags with crypto/cipher's for
// every length from 0 to three 32-block rounds and a few past, and for
// large inputs, under random keys of every AES size and random nonces,
// then once more through the portable path; on a machine without the
// vector code both are crypto/cipher's and the test says so.
func TestTagsMatchCryptoCipher(t *testing.T) {
	if !useFast {
		t.Log("no AVX-512 VPCLMULQDQ here: MAC is crypto/cipher's GCM")
	}
	lens := []int{}
	for n := 0; n <= 3*512+40; n++ {
		lens = append(lens, n)
	}
	lens = append(lens, 4096, 4096+16, 4096+32+16, 64<<10, 64<<10+7, 1<<20, 1<<20+48, 4<<20+5)
	for _, c := range []struct {
		ks   int
		fast bool
	}{{16, useFast}, {24, useFast}, {32, useFast}, {32, false}} {
		ks := c.ks
		key := randBytes(ks)
		m, err := New(key)
		if err != nil {
			t.Fatal(err)
		}
		if m.Fast() != useFast {
			t.Fatalf("Fast() = %v, want %v", m.Fast(), useFast)
		}
		m.fast = c.fast // the last case: the portable path, on any machine
		for _, n := range lens {
			nonce := randBytes(NonceSize)
			data := randBytes(n)
			want := stdTag(t, key, nonce, data)
			got := m.Tag([]byte("prefix"), nonce, data)
			if !bytes.Equal(got[:6], []byte("prefix")) || !bytes.Equal(got[6:], want) {
				t.Fatalf("key %d bytes, %d bytes of data: tag %x, crypto/cipher's %x", ks, n, got[6:], want)
			}
			if err := m.Check(nonce, want, data); err != nil {
				t.Fatalf("key %d bytes, %d bytes: Check of crypto/cipher's tag: %v", ks, n, err)
			}
		}
	}
}

// TestCheckRefuses flips every bit of a tag, of the nonce and of the data
// (a 300-byte frame: a 16-block round and a tail) in turn: each is
// refused.
func TestCheckRefuses(t *testing.T) {
	key := randBytes(32)
	m, err := New(key)
	if err != nil {
		t.Fatal(err)
	}
	nonce := randBytes(NonceSize)
	data := randBytes(300)
	tag := m.Tag(nil, nonce, data)
	if err := m.Check(nonce, tag, data); err != nil {
		t.Fatalf("own tag refused: %v", err)
	}
	for _, part := range []struct {
		name string
		b    []byte
	}{{"tag", tag}, {"nonce", nonce}, {"data", data}} {
		for i := range len(part.b) * 8 {
			part.b[i/8] ^= 1 << (i % 8)
			if m.Check(nonce, tag, data) == nil {
				t.Fatalf("%s bit %d flipped: accepted", part.name, i)
			}
			part.b[i/8] ^= 1 << (i % 8)
		}
	}
	if m.Check(nonce, tag[:15], data) == nil {
		t.Fatal("a 15-byte tag accepted")
	}
}

// TestUnalignedInputs tags data at random offsets of a buffer: the
// input's alignment in memory must not matter.
func TestUnalignedInputs(t *testing.T) {
	key := randBytes(32)
	m, err := New(key)
	if err != nil {
		t.Fatal(err)
	}
	r := mrand.New(mrand.NewPCG(1, 2))
	buf := randBytes(8192 + 64)
	for range 500 {
		off := r.IntN(64)
		n := r.IntN(8192)
		nonce := randBytes(NonceSize)
		data := buf[off : off+n]
		if got, want := m.Tag(nil, nonce, data), stdTag(t, key, nonce, data); !bytes.Equal(got, want) {
			t.Fatalf("offset %d, %d bytes: %x, want %x", off, n, got, want)
		}
	}
}

func FuzzTag(f *testing.F) {
	f.Add([]byte("k"), []byte{})
	f.Add([]byte("key"), bytes.Repeat([]byte{0xff}, 300))
	f.Fuzz(func(t *testing.T, seed, data []byte) {
		key := make([]byte, 32)
		copy(key, seed)
		nonce := make([]byte, NonceSize)
		copy(nonce, seed)
		m, err := New(key)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := m.Tag(nil, nonce, data), stdTag(t, key, nonce, data); !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: %x, want %x", len(data), got, want)
		}
	})
}

func benchTag(b *testing.B, n int, fast bool) {
	m, err := New(randBytes(32))
	if err != nil {
		b.Fatal(err)
	}
	m.fast = fast && useFast
	nonce := randBytes(NonceSize)
	data := randBytes(n)
	var tag []byte
	b.SetBytes(int64(n))
	for b.Loop() {
		tag = m.Tag(tag[:0], nonce, data)
	}
}

func BenchmarkTag(b *testing.B) {
	for _, n := range []int{4096 + 32, 64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("vector/%d", n), func(b *testing.B) { benchTag(b, n, true) })
		b.Run(fmt.Sprintf("cipher/%d", n), func(b *testing.B) { benchTag(b, n, false) })
	}
}
