package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/zeebo/blake3"

	"github.com/repd/repd/internal/gmac"
)

// Frame MACs: AES-256-GCM used as a MAC (GMAC), one key per direction,
// the direction's frame counter as the nonce. See the package
// documentation ("Authenticated frames") for the construction and why.

// Part of the wire format.
const (
	// rekeyInterval is how many frames a direction authenticates under one
	// key; frame rekeyInterval·e+i (0 ≤ i < rekeyInterval) uses key e.
	rekeyInterval = 1 << 32
	// maxFrames: a direction authenticates at most this many frames, so
	// its counter never wraps (at 10 million frames a second it would
	// take 58 000 years).
	maxFrames = math.MaxUint64
	// gcmNonceSize is GCM's standard nonce: counter u64 ‖ 4 zero bytes.
	gcmNonceSize = 12
	// ctxRekey derives key e+1 from key e.
	ctxRekey = "repd 2026-12-05 peer link v2: AES-256-GCM frame key, next 2^32 frames"
	// splitMACMin: between two peers announcing FeatureSplitMAC, a frame
	// with a payload of at least this many bytes gets a two-part tag
	// (sealSplit), which its writer computes over its head and data
	// where they lie instead of putting the frame together first.
	splitMACMin = 64 << 10
	// splitAlign: a split frame's payload of n bytes divides at n mod
	// splitAlign: a Write's 16-byte head, then its data.
	splitAlign = 512
	// The last four bytes of the nonce say which tag of a frame it is:
	// the whole frame's, or a split frame's outer and inner tags.
	partWhole, partOuter, partInner = 0, 1, 2
)

// splitPoint is where the payload of a split frame of plen bytes divides:
// the inner tag covers payload[splitPoint(plen):].
func splitPoint(plen int) int { return plen % splitAlign }

// errFramesExhausted: a direction sent maxFrames frames.
var errFramesExhausted = errors.New("frame counter exhausted: the connection must be reopened")

// frameMAC authenticates one direction of a connection: the tag of frame
// number ctr (frames sent in this direction since the handshake, from 0)
// is AES-256-GCM's over no plaintext, with the frame (header ‖ payload as
// sent) as additional data and ctr as the nonce, under the key of ctr's
// epoch. It is not safe for concurrent use: the Writer or the Reader
// that owns it calls it in frame order.
type frameMAC struct {
	mac   *gmac.MAC
	key   [32]byte // key number epoch: the next one is derived from it
	epoch uint64
	ctr   uint64 // the number of the next frame
	every uint64 // frames per key: rekeyInterval (tests make it small)
	nonce [gcmNonceSize]byte
	tag   [MACSize]byte
	// split: both sides announced FeatureSplitMAC, so frames of at least
	// splitMACMin payload bytes have two-part tags.
	split    bool
	splitMin int           // splitMACMin (tests make it small)
	inner    [MACSize]byte // a split frame's inner tag
	outer    []byte        // a split frame's outer bytes: header ‖ payload[:s] ‖ inner tag
}

func newFrameMAC(key *[32]byte) (*frameMAC, error) {
	m := &frameMAC{key: *key, every: rekeyInterval, splitMin: splitMACMin}
	if err := m.setKey(); err != nil {
		return nil, err
	}
	return m, nil
}

// setKey makes m.key the MAC's key. The tags are AES-GCM's (gmac: its
// own vector code where the CPU has AVX-512 VPCLMULQDQ, about 3 times
// crypto/cipher's speed; crypto/cipher's elsewhere; the same tags). The
// nonce is the frame counter, unique per key by construction, and not
// sent.
func (m *frameMAC) setKey() error {
	mac, err := gmac.New(m.key[:])
	if err != nil {
		return fmt.Errorf("frame key: %w", err)
	}
	m.mac = mac
	return nil
}

// start prepares the nonce of frame m.ctr, moving to the next key at an
// epoch's first frame.
func (m *frameMAC) start() error {
	if m.ctr == maxFrames {
		return errFramesExhausted
	}
	if e := m.ctr / m.every; e != m.epoch {
		for ; m.epoch < e; m.epoch++ {
			var next [32]byte
			blake3.DeriveKey(ctxRekey, m.key[:], next[:])
			m.key = next
		}
		if err := m.setKey(); err != nil {
			return err
		}
	}
	binary.LittleEndian.PutUint64(m.nonce[:8], m.ctr)
	m.nonce[8] = partWhole // splitTag moves it for a split frame's tags
	return nil
}

// seal appends the tag of the next frame of the direction to frame and
// counts it.
func (m *frameMAC) seal(frame []byte) ([]byte, error) {
	if err := m.start(); err != nil {
		return frame, err
	}
	// The tag goes to m.tag first: frame may have no room after it.
	m.mac.Tag(m.tag[:0], m.nonce[:], frame)
	m.ctr++
	return append(frame, m.tag[:]...), nil
}

// splits reports whether a frame of plen payload bytes has a two-part tag.
func (m *frameMAC) splits(plen int) bool { return m.split && plen >= m.splitMin }

// splitTag computes the tag of the next frame (already started) of header
// hdr and payload pre ‖ inner, pre being its first splitPoint bytes: the
// inner tag covers inner alone, under the frame's nonce with part
// partInner; the frame's tag covers hdr ‖ pre ‖ the inner tag, with part
// partOuter. The inner tag is never sent. Only the outer bytes, a few
// hundred at most, are put together: inner is read where it lies.
func (m *frameMAC) splitTag(hdr, pre, inner []byte) []byte {
	m.nonce[8] = partInner
	m.mac.Tag(m.inner[:0], m.nonce[:], inner)
	m.outer = append(append(append(m.outer[:0], hdr...), pre...), m.inner[:]...)
	m.nonce[8] = partOuter
	return m.outer
}

// sealSplit returns the tag of the next frame of the direction, a split
// one (splits), and counts it.
func (m *frameMAC) sealSplit(hdr, pre, inner []byte) ([]byte, error) {
	if err := m.start(); err != nil {
		return nil, err
	}
	outer := m.splitTag(hdr, pre, inner)
	m.mac.Tag(m.tag[:0], m.nonce[:], outer)
	m.ctr++
	return m.tag[:], nil
}

// openSplit checks that tag is the tag of the split frame hdr ‖ pre ‖
// inner as the next frame of the direction, and counts it if so.
func (m *frameMAC) openSplit(hdr, pre, inner, tag []byte) error {
	if err := m.start(); err != nil {
		return err
	}
	outer := m.splitTag(hdr, pre, inner)
	if err := m.mac.Check(m.nonce[:], tag, outer); err != nil {
		return err
	}
	m.ctr++
	return nil
}

// open checks that tag is the tag of frame as the next frame of the
// direction, and counts it if so.
func (m *frameMAC) open(frame, tag []byte) error {
	if err := m.start(); err != nil {
		return err
	}
	if err := m.mac.Check(m.nonce[:], tag, frame); err != nil {
		return err
	}
	m.ctr++
	return nil
}
