// Package gmac computes AES-GCM tags over additional data only (GMAC): the
// tag AES-GCM's Seal returns for no plaintext, with the input as the
// additional data. On x86-64 processors with AVX-512 and the vector
// carry-less multiply (VPCLMULQDQ) it hashes 32 blocks per round with
// 512-bit registers; elsewhere it calls crypto/cipher's GCM. The tags are
// the same either way (the tests compare them with crypto/cipher's for
// every length up to a few blocks past a round and for large inputs), so
// nodes of either kind talk to each other.
package gmac

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
)

// NonceSize is GCM's standard nonce size; TagSize its tag size.
const (
	NonceSize = 12
	TagSize   = 16
)

// MAC computes GMAC tags under one AES key. It is not safe for
// concurrent use (a frame MAC belongs to one direction of a connection).
type MAC struct {
	block cipher.Block
	aead  cipher.AEAD // the portable path (fast == false)
	fast  bool
	tab   table
	j     [16]byte // the counter block, here: a local would escape to the heap through block.Encrypt
}

// table holds the hash key H's powers for the rounds of 32 and 16
// blocks, in the multiplier's representation: entry j is H^(32-j), so the
// last is H. An alias: the platform files name the array type itself.
type table = [32][16]byte

// New returns the MAC of an AES key (16, 24 or 32 bytes).
func New(key []byte) (*MAC, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	m := &MAC{block: block, aead: aead, fast: useFast}
	if m.fast {
		var h [16]byte
		block.Encrypt(h[:], h[:])
		m.tab = powers(h)
	}
	return m, nil
}

// Fast reports whether m hashes with the vector code.
func (m *MAC) Fast() bool { return m.fast }

// Tag appends to dst the tag of data under nonce (NonceSize bytes), and
// returns the result: crypto/cipher's Seal(dst, nonce, nil, data).
func (m *MAC) Tag(dst, nonce, data []byte) []byte {
	if len(nonce) != NonceSize {
		panic("gmac: bad nonce length")
	}
	if !m.fast {
		return m.aead.Seal(dst, nonce, nil, data)
	}
	var t [TagSize]byte
	m.sum(&t, nonce, data)
	return append(dst, t[:]...)
}

// errOpen is Check's: the tag does not match.
var errOpen = errors.New("gmac: message authentication failed")

// Check reports, in constant time with respect to the tags, whether tag
// is data's tag under nonce; nil if it is.
func (m *MAC) Check(nonce, tag, data []byte) error {
	if len(nonce) != NonceSize {
		panic("gmac: bad nonce length")
	}
	if !m.fast {
		_, err := m.aead.Open(nil, nonce, tag, data)
		return err
	}
	if len(tag) != TagSize {
		return errOpen
	}
	var t [TagSize]byte
	m.sum(&t, nonce, data)
	if subtle.ConstantTimeCompare(t[:], tag) != 1 {
		return errOpen
	}
	return nil
}

// sum computes the tag: E(K, nonce ‖ 1) ⊕ GHASH(H, data ‖ padding ‖
// the lengths block).
func (m *MAC) sum(t *[TagSize]byte, nonce, data []byte) {
	var x [16]byte // the hash state, in the multiplier's representation
	full := len(data) &^ 15
	if full > 0 {
		ghashBlocks(&x, &m.tab, &data[0], full/16)
	}
	var last [32]byte
	k := 0
	if full < len(data) {
		copy(last[:], data[full:])
		k = 16
	}
	// The lengths block: data's length in bits, then the plaintext's (0).
	binary.BigEndian.PutUint64(last[k:], uint64(len(data))*8)
	ghashBlocks(&x, &m.tab, &last[0], k/16+1)
	j := &m.j
	copy(j[:12], nonce)
	j[12], j[13], j[14], j[15] = 0, 0, 0, 1
	m.block.Encrypt(j[:], j[:])
	for i := range t {
		t[i] = x[15-i] ^ j[i]
	}
}

// powers returns the table of H (E(K, 0^128)): H in the multiplier's
// representation (byte order reversed, then multiplied by x modulo the
// reflected polynomial, which the product's one-bit shift needs), and
// its powers by the multiplier itself.
func powers(h [16]byte) table {
	lo := binary.BigEndian.Uint64(h[8:])
	hi := binary.BigEndian.Uint64(h[:8])
	carry := hi >> 63
	hi = hi<<1 | lo>>63
	lo <<= 1
	if carry != 0 {
		lo ^= 1
		hi ^= 0xc200000000000000
	}
	var p [16]byte
	binary.LittleEndian.PutUint64(p[:8], lo)
	binary.LittleEndian.PutUint64(p[8:], hi)
	var t table
	t[len(t)-1] = p
	for j := len(t) - 2; j >= 0; j-- {
		t[j] = t[j+1]
		gfmul(&t[j], &p)
	}
	return t
}
