package protocol

import (
	"encoding/binary"
	"fmt"
)

// Feature bits announced in Hello. Part of the wire format.
const (
	FeatureS2   uint64 = 1 << 0 // decodes s2 payloads
	FeatureZstd uint64 = 1 << 1 // decodes zstd payloads
	// FeatureDedup: resolves FlagDedup writes and answers DataReq.
	FeatureDedup uint64 = 1 << 2
	// FeatureFrameMAC: after the handshake the sender's frames carry
	// AES-256-GCM tags instead of xxhash64 (it has a shared secret and the
	// link is not TLS). Not a capability but a mode both sides must share:
	// Dial and Accept set or clear it in the Hello they send and refuse a
	// peer that differs.
	FeatureFrameMAC uint64 = 1 << 5
	// featureFrameMACBLAKE3 is retired: pre-release builds of version 2
	// announced keyed-BLAKE3 frame MACs with it. A peer that sets it
	// without FeatureFrameMAC is refused with a message that says so
	// (rather than failing the first frame as if it were forged).
	featureFrameMACBLAKE3 uint64 = 1 << 4
	// FeatureSplitMAC: makes and checks the two-part tags of large frames
	// (see the package documentation); used when both sides announce it
	// and frames are authenticated.
	FeatureSplitMAC uint64 = 1 << 7
	// Features is what this implementation supports.
	Features = FeatureS2 | FeatureZstd | FeatureDedup | FeatureCluster | FeatureSnapshot | FeatureSplitMAC
)

// NonceSize is the size of a handshake nonce.
const NonceSize = 32

// MaxNameLen bounds node and resource names (the configuration's rule:
// letters, digits, '-', '_' and '.', at most 64).
const MaxNameLen = 64

// helloFixed is the size of a Hello's fixed fields.
const helloFixed = 8 + 8 + 4 + 1 + NonceSize

// Hello opens a connection.
//
//	features u64 | size u64 | granularity u32 | node id u8 | nonce [32]
//	| resource str | name str
//
// Decode refuses a resource or node name that breaks the configuration's
// rule (ValidName), so no name a peer chose reaches a log line unchecked.
type Hello struct {
	Features    uint64
	Size        uint64
	Granularity uint32
	NodeID      uint8
	Nonce       [NonceSize]byte
	Resource    string
	Name        string
}

// Append appends the payload encoding of h to b.
func (h *Hello) Append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, h.Features)
	b = binary.LittleEndian.AppendUint64(b, h.Size)
	b = binary.LittleEndian.AppendUint32(b, h.Granularity)
	b = append(b, h.NodeID)
	b = append(b, h.Nonce[:]...)
	b = appendString(b, h.Resource)
	return appendString(b, h.Name)
}

// Decode parses a Hello payload.
func (h *Hello) Decode(p []byte) error {
	d := decoder{p: p}
	h.Features = d.u64()
	h.Size = d.u64()
	h.Granularity = d.u32()
	h.NodeID = d.u8()
	copy(h.Nonce[:], d.bytes(NonceSize))
	h.Resource = d.str()
	h.Name = d.str()
	if err := d.done("Hello"); err != nil {
		return err
	}
	return h.validate()
}

// validate checks the names of h.
func (h *Hello) validate() error {
	if !ValidName(h.Resource) {
		return fmt.Errorf("%w: Hello names resource %s: want 1 to %d letters, digits, '-', '_' or '.'", ErrCorrupt, quoteName(h.Resource), MaxNameLen)
	}
	if !ValidName(h.Name) {
		return fmt.Errorf("%w: Hello names node %s: want 1 to %d letters, digits, '-', '_' or '.'", ErrCorrupt, quoteName(h.Name), MaxNameLen)
	}
	return nil
}

// ValidName reports whether s is a valid node or resource name: 1 to
// MaxNameLen letters, digits, '-', '_' or '.'.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '-' || c == '_' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// quoteName quotes an invalid name for an error message: escaped, and cut
// to its first 32 bytes.
func quoteName(s string) string {
	if len(s) > 32 {
		return fmt.Sprintf("%+q... (%d bytes)", s[:32], len(s))
	}
	return fmt.Sprintf("%+q", s)
}

// AuthSize is the size of an Auth payload.
const AuthSize = 32

// Auth is a handshake proof: mac [32] (handshake.go).
type Auth struct{ MAC [AuthSize]byte }

// Append appends the payload encoding of a to b.
func (a *Auth) Append(b []byte) []byte { return append(b, a.MAC[:]...) }

// Decode parses an Auth payload.
func (a *Auth) Decode(p []byte) error {
	d := decoder{p: p}
	copy(a.MAC[:], d.bytes(len(a.MAC)))
	return d.done("Auth")
}

// Role, disk and replication states as they travel in State frames. Part of
// the wire format. (Package replica gives them names.)
type (
	WireRole uint8
	WireDisk uint8
	WireRepl uint8
)

// State flags. Part of the wire format.
const (
	StateDiscardMyData uint8 = 1 << 0 // sender gives up its changes: make it the sync target
	StateNewUUID       uint8 = 1 << 1 // sender started a new current UUID with a cleared bitmap: adopt it, UpToDate
	StateCrashedPrim   uint8 = 1 << 2 // sender was primary when it crashed
	StateFullSync      uint8 = 1 << 3 // sender wants a full sync (unrelated data accepted)
)

// State is a node's role, disk and generation identifiers, sent after the
// handshake and on every change.
//
//	role u8 | disk u8 | repl u8 | flags u8 | current u64 | bitmap u64
//	| history [2]u64 | out-of-sync bytes u64
//
// Bitmap is the sender's bitmap UUID for the receiver; Repl the sender's
// replication state toward the receiver (for Ahead/Behind).
type State struct {
	Role      WireRole
	Disk      WireDisk
	Repl      WireRepl
	Flags     uint8
	Current   uint64
	Bitmap    uint64
	History   [2]uint64
	OutOfSync uint64
	// AppliedFrom and Applied: the last Primary whose writes the node
	// applied, and its sequence number up to which they are applied (for
	// elections).
	AppliedFrom uint8
	Applied     uint64
}

// Append appends the payload encoding of s to b.
func (s *State) Append(b []byte) []byte {
	b = append(b, byte(s.Role), byte(s.Disk), byte(s.Repl), s.Flags)
	b = binary.LittleEndian.AppendUint64(b, s.Current)
	b = binary.LittleEndian.AppendUint64(b, s.Bitmap)
	b = binary.LittleEndian.AppendUint64(b, s.History[0])
	b = binary.LittleEndian.AppendUint64(b, s.History[1])
	b = binary.LittleEndian.AppendUint64(b, s.OutOfSync)
	b = append(b, s.AppliedFrom)
	return binary.LittleEndian.AppendUint64(b, s.Applied)
}

// Decode parses a State payload.
func (s *State) Decode(p []byte) error {
	d := decoder{p: p}
	s.Role = WireRole(d.u8())
	s.Disk = WireDisk(d.u8())
	s.Repl = WireRepl(d.u8())
	s.Flags = d.u8()
	s.Current = d.u64()
	s.Bitmap = d.u64()
	s.History[0] = d.u64()
	s.History[1] = d.u64()
	s.OutOfSync = d.u64()
	s.AppliedFrom = d.u8()
	s.Applied = d.u64()
	return d.done("State")
}

// WriteHeadSize is the size of a Write frame's fixed part.
const WriteHeadSize = 16

// Write is a write to apply at Off. With FlagTrim or FlagZeroes it has no
// data and Len is the range length; otherwise Len == len(Data).
//
//	off u64 | len u64 | data
type Write struct {
	Off  uint64
	Len  uint64
	Data []byte
}

// AppendHead appends the fixed part of a Write payload; the data follows it.
func (w *Write) AppendHead(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, w.Off)
	return binary.LittleEndian.AppendUint64(b, w.Len)
}

// Decode parses a Write payload of a frame with flags f. Data aliases p.
func (w *Write) Decode(p []byte, f Flags) error {
	if len(p) < WriteHeadSize {
		return fmt.Errorf("%w: Write payload of %d bytes", ErrCorrupt, len(p))
	}
	w.Off = binary.LittleEndian.Uint64(p)
	w.Len = binary.LittleEndian.Uint64(p[8:])
	w.Data = p[WriteHeadSize:]
	if f&(FlagTrim|FlagZeroes) != 0 {
		if len(w.Data) != 0 {
			return fmt.Errorf("%w: trim/zeroes Write carries %d data bytes", ErrCorrupt, len(w.Data))
		}
	} else if w.Len != uint64(len(w.Data)) {
		return fmt.Errorf("%w: Write says %d bytes, carries %d", ErrCorrupt, w.Len, len(w.Data))
	}
	if w.Off+w.Len < w.Off {
		return fmt.Errorf("%w: Write range %d+%d overflows", ErrCorrupt, w.Off, w.Len)
	}
	return nil
}

// Extent is a run of bitmap blocks [Start, Start+Count).
type Extent struct{ Start, Count uint64 }

// MaxExtents is the most extents one Bitmap frame carries.
const MaxExtents = 32 << 10

// AppendExtents appends a Bitmap payload: count u32 | count × (start u64,
// count u64).
func AppendExtents(b []byte, ex []Extent) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(ex)))
	for _, e := range ex {
		b = binary.LittleEndian.AppendUint64(b, e.Start)
		b = binary.LittleEndian.AppendUint64(b, e.Count)
	}
	return b
}

// DecodeExtents parses a Bitmap payload, appending to ex. An extent
// that is empty or whose end overflows is refused.
func DecodeExtents(p []byte, ex []Extent) ([]Extent, error) {
	return decodeExtents(p, ex, MaxExtents, "Bitmap")
}

func decodeExtents(p []byte, ex []Extent, most int, what string) ([]Extent, error) {
	d := decoder{p: p}
	n := int(d.u32())
	if d.bad || n > most || len(d.p) != 16*n {
		return ex, fmt.Errorf("%w: %s payload says %d extents in %d bytes (at most %d)", ErrCorrupt, what, n, len(p), most)
	}
	for range n {
		e := Extent{Start: d.u64(), Count: d.u64()}
		if e.Count == 0 || e.Start+e.Count < e.Start {
			return ex, fmt.Errorf("%w: %s extent %d+%d is empty or overflows", ErrCorrupt, what, e.Start, e.Count)
		}
		ex = append(ex, e)
	}
	return ex, d.done(what)
}

// ResyncDone ends a resync: the target takes Current as its current UUID.
//
//	current u64
type ResyncDone struct{ Current uint64 }

// Append appends the payload encoding.
func (r *ResyncDone) Append(b []byte) []byte { return binary.LittleEndian.AppendUint64(b, r.Current) }

// Decode parses a ResyncDone payload.
func (r *ResyncDone) Decode(p []byte) error {
	d := decoder{p: p}
	r.Current = d.u64()
	return d.done("ResyncDone")
}

// Range is a byte range: off u64 | len u64.
type Range struct{ Off, Len uint64 }

// Append appends the payload encoding.
func (r *Range) Append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, r.Off)
	return binary.LittleEndian.AppendUint64(b, r.Len)
}

// Decode parses a Range payload.
func (r *Range) Decode(p []byte) error {
	d := decoder{p: p}
	r.Off = d.u64()
	r.Len = d.u64()
	return d.done("Range")
}

func appendString(b []byte, s string) []byte {
	if len(s) > 0xffff {
		s = s[:0xffff]
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// decoder reads fixed fields, remembering the first short read.
type decoder struct {
	p   []byte
	bad bool
}

func (d *decoder) take(n int) []byte {
	if d.bad || len(d.p) < n {
		d.bad = true
		return nil
	}
	b := d.p[:n]
	d.p = d.p[n:]
	return b
}

func (d *decoder) u8() uint8 {
	if b := d.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) bytes(n int) []byte { return d.take(n) }

func (d *decoder) str() string {
	b := d.take(2)
	if b == nil {
		return ""
	}
	return string(d.take(int(binary.LittleEndian.Uint16(b))))
}

func (d *decoder) done(what string) error {
	if d.bad {
		return fmt.Errorf("%w: short %s payload", ErrCorrupt, what)
	}
	if len(d.p) != 0 {
		return fmt.Errorf("%w: %d trailing bytes in %s payload", ErrCorrupt, len(d.p), what)
	}
	return nil
}
