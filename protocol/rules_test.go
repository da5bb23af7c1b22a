package protocol

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"
)

// Every type constant is in the table, with a unique name and a limit the
// frame geometry allows.
func TestTypeTable(t *testing.T) {
	all := []Type{TypeHello, TypeAuth, TypeRefuse, TypeState, TypeWrite, TypeAck, TypeBarrier, TypeBarrierAck, TypePing,
		TypePong, TypeBitmap, TypeResyncReq, TypeResyncDone, TypeDataReq, TypeCsums, TypeCsumsDone, TypeVerify,
		TypeVerifyReply, TypePromoteReq, TypePromoteReply, TypePromoteEnd, TypePeerSeqs, TypeLease, TypeLeaseAck,
		TypeSnapshot, TypeSnapshotAck, TypeSnapshotReq, TypeSnapshotReply}
	names := map[string]bool{}
	for _, typ := range all {
		ti := typ.info()
		if ti == nil {
			t.Fatalf("type %d missing from the table", typ)
		}
		if names[ti.name] || strings.HasPrefix(typ.String(), "Type(") {
			t.Fatalf("type %d: name %q", typ, ti.name)
		}
		names[ti.name] = true
		if ti.limit > MaxPayload || ti.when == 0 {
			t.Fatalf("%s: limit %d, when %b", typ, ti.limit, ti.when)
		}
	}
	for typ := Type(0); typ < 255; typ++ {
		if typ.info() != nil && !names[typ.String()] {
			t.Fatalf("table has type %d that no constant names", typ)
		}
	}
	if Type(15).info() != nil || Type(15).String() != "Type(15)" || MaxPayloadOf(Type(99)) != 0 {
		t.Fatal("reserved type 15 is known")
	}
	// The limits fit what the senders send at most.
	if MaxPayloadOf(TypeHello) != len(validHelloMax().Append(nil)) {
		t.Fatalf("Hello limit %d, largest Hello %d", MaxPayloadOf(TypeHello), len(validHelloMax().Append(nil)))
	}
	if MaxPayloadOf(TypeState) != len((&State{}).Append(nil)) || MaxPayloadOf(TypeResyncDone) != len((&ResyncDone{}).Append(nil)) ||
		MaxPayloadOf(TypeResyncReq) != len((&Range{}).Append(nil)) || MaxPayloadOf(TypeAuth) != len((&Auth{}).Append(nil)) {
		t.Fatal("a fixed-size message's limit differs from its size")
	}
	ex := make([]Extent, MaxExtents)
	for i := range ex {
		ex[i] = Extent{uint64(2 * i), 1}
	}
	if MaxPayloadOf(TypeBitmap) != len(AppendExtents(nil, ex)) {
		t.Fatal("Bitmap limit")
	}
	h := Hashes{Off: 0, Len: MaxData, Sums: make([][SumSize]byte, MaxSums)}
	if MaxPayloadOf(TypeCsums) != len(h.Append(nil)) || MaxPayloadOf(TypeVerify) != len(h.Append(nil)) {
		t.Fatal("Hashes limit")
	}
	ps := make([]PeerSeq, MaxPeerSeqs)
	if MaxPayloadOf(TypePeerSeqs) != len(AppendPeerSeqs(nil, ps)) {
		t.Fatal("PeerSeqs limit")
	}
	big := SnapshotReq{Name: strings.Repeat("s", MaxNameLen), Nodes: make([]uint8, MaxSnapshotNodes)}
	for i := range big.Nodes {
		big.Nodes[i] = uint8(i)
	}
	if MaxPayloadOf(TypeSnapshotReq) != len(big.Append(nil)) || MaxPayloadOf(TypeSnapshot) != MaxNameLen {
		t.Fatal("snapshot limits")
	}
}

func validHelloMax() *Hello {
	h := validHello(1, strings.Repeat("n", MaxNameLen))
	h.Resource = strings.Repeat("r", MaxNameLen)
	return h
}

// The Reader and the Writer enforce each type's limit and phase.
func TestTypeRulesEnforced(t *testing.T) {
	for typ := Type(1); typ <= typeMax; typ++ {
		ti := typ.info()
		if ti == nil {
			continue
		}
		over := make([]byte, ti.limit+1)
		// The Writer refuses to send more than the limit.
		w, _ := NewWriter(&bytes.Buffer{}, CodecNone, 0)
		if ti.when&postAuth == 0 {
			w = newHandshakeWriter(&bytes.Buffer{})
		}
		if err := w.WriteFrame(typ, 0, 0, over, nil); err == nil || !strings.Contains(err.Error(), "exceeds") {
			t.Errorf("%s: writer sent %d bytes: %v", typ, len(over), err)
		}
		// The Reader refuses a frame above the limit on its header.
		fr := rawFrame(Version, typ, nil)
		putHeader(fr, &Header{Magic: Magic, Version: Version, Type: typ, PayloadLen: ti.limit + 1, RawLen: ti.limit + 1})
		for _, open := range []bool{false, true} {
			r := NewReader(bytes.NewReader(fr[:HeaderSize]))
			if !open {
				r = newHandshakeReader(bytes.NewReader(fr[:HeaderSize]))
			}
			if _, err := r.ReadFrame(); !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s (open %v): %d bytes announced: %v", typ, open, ti.limit+1, err)
			}
		}
		// A frame within the limit passes only in its phases.
		good := rawFrame(Version, typ, make([]byte, min(ti.limit, MaxPreAuthPayload)))
		for _, open := range []bool{false, true} {
			r := NewReader(bytes.NewReader(good))
			phase := uint8(postAuth)
			if !open {
				r, phase = newHandshakeReader(bytes.NewReader(good)), preAuth
			}
			_, err := r.ReadFrame()
			if allowed := ti.when&phase != 0; allowed != (err == nil) {
				t.Errorf("%s (open %v): allowed %v, read: %v", typ, open, allowed, err)
			}
			if err != nil && !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s: %v does not wrap ErrCorrupt", typ, err)
			}
		}
	}
	// Before the handshake the limit is MaxPreAuthPayload whatever the type.
	if MaxPreAuthPayload > 4096 || MaxHelloSize > 256 {
		t.Fatal("pre-authentication frames are not small")
	}
	// An unknown type is refused by both.
	if err := newHandshakeWriter(&bytes.Buffer{}).WriteFrame(Type(15), 0, 0, nil, nil); err == nil {
		t.Error("writer sent type 15")
	}
	if _, err := NewReader(bytes.NewReader(rawFrame(Version, Type(15), nil))).ReadFrame(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("type 15: %v", err)
	}
}

func TestHelloNames(t *testing.T) {
	for name, ok := range map[string]bool{
		"alpha": true, "node-1_b.x": true, strings.Repeat("a", 64): true, "A9": true,
		"": false, strings.Repeat("a", 65): false, "be\nta": false, "al pha": false, "Ω": false, "a/b": false, "a\x00": false,
	} {
		if ValidName(name) != ok {
			t.Errorf("ValidName(%q) = %v", name, !ok)
		}
		h := validHello(1, "alpha")
		h.Name = name
		if err := new(Hello).Decode(h.Append(nil)); (err == nil) != ok {
			t.Errorf("Hello named %q: %v", name, err)
		}
		h = validHello(1, "alpha")
		h.Resource = name
		if err := new(Hello).Decode(h.Append(nil)); (err == nil) != ok || err != nil && !errors.Is(err, ErrCorrupt) {
			t.Errorf("Hello of resource %q: %v", name, err)
		}
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := Dial(NewConn(a), &Hello{Resource: "r0", Name: "bad name"}, nil, 1, nil); err == nil || !strings.Contains(err.Error(), "not valid") {
		t.Errorf("Dial with an invalid own name: %v", err)
	}
}

func TestHashesBounds(t *testing.T) {
	sums := func(n int) [][SumSize]byte { return make([][SumSize]byte, n) }
	for _, tc := range []struct {
		name string
		h    Hashes
		ok   bool
	}{
		{"one 4 KiB block", Hashes{Off: 4096, Len: 4096, Sums: sums(1)}, true},
		{"one batch at 4 KiB", Hashes{Off: 0, Len: MaxData, Sums: sums(MaxData / 4096)}, true},
		{"one batch at the smallest granularity", Hashes{Off: 0, Len: MaxData, Sums: sums(MaxSums)}, true},
		{"one 1 MiB block", Hashes{Off: 1 << 40, Len: 1 << 20, Sums: sums(1)}, true},
		{"short last block", Hashes{Off: 0, Len: 4096 + 100, Sums: sums(2)}, true},
		{"end overflows", Hashes{Off: ^uint64(0) - 4095, Len: 8192, Sums: sums(2)}, false},
		{"beyond one batch", Hashes{Off: 0, Len: MaxData + 1, Sums: sums(1)}, false},
		{"4096 sums of 1 MiB (4 GiB of work)", Hashes{Off: 0, Len: 4096 << 20, Sums: sums(4096)}, false},
		{"empty range", Hashes{Off: 0, Len: 0}, false},
		{"no sums", Hashes{Off: 0, Len: 4096}, false},
		{"more sums than blocks of the smallest granularity", Hashes{Off: 0, Len: 4096, Sums: sums(4096/MinGranularity + 1)}, false},
	} {
		err := new(Hashes).Decode(tc.h.Append(nil))
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// A count that disagrees with the bytes.
	b := (&Hashes{Off: 0, Len: 4096, Sums: sums(1)}).Append(nil)
	if err := new(Hashes).Decode(b[:len(b)-1]); !errors.Is(err, ErrCorrupt) {
		t.Errorf("short sums: %v", err)
	}
}

func TestMismatchesAndExtentsBounds(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    Mismatches
		ok   bool
	}{
		{"none", Mismatches{Off: 0, Len: MaxData}, true},
		{"two ranges", Mismatches{Off: 1 << 20, Len: 1 << 20, Bad: []Extent{{1 << 20, 4096}, {2<<20 - 4096, 4096}}}, true},
		{"end overflows", Mismatches{Off: ^uint64(0) - 10, Len: 4096}, false},
		{"beyond one batch", Mismatches{Off: 0, Len: MaxData + 1}, false},
		{"empty batch", Mismatches{Off: 0, Len: 0}, false},
		{"empty range", Mismatches{Off: 0, Len: 8192, Bad: []Extent{{0, 0}}}, false},
		{"range outside", Mismatches{Off: 8192, Len: 8192, Bad: []Extent{{0, 4096}}}, false},
		{"range past the end", Mismatches{Off: 8192, Len: 8192, Bad: []Extent{{12288, 8192}}}, false},
		{"range overflowing", Mismatches{Off: 0, Len: 8192, Bad: []Extent{{^uint64(0), 2}}}, false},
		{"more ranges than sums", Mismatches{Off: 0, Len: MaxData, Bad: make([]Extent, MaxSums+1)}, false},
	} {
		err := new(Mismatches).Decode(tc.m.Append(nil))
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	for _, tc := range []struct {
		name string
		ex   []Extent
		ok   bool
	}{
		{"fine", []Extent{{0, 1}, {5, 1 << 30}}, true},
		{"empty", []Extent{{3, 0}}, false},
		{"overflowing", []Extent{{^uint64(0) - 1, 5}}, false},
	} {
		if _, err := DecodeExtents(AppendExtents(nil, tc.ex), nil); (err == nil) != tc.ok {
			t.Errorf("extents %s: %v", tc.name, err)
		}
	}
	if _, err := DecodeExtents(AppendExtents(nil, nil), nil); err != nil {
		t.Errorf("no extents: %v", err)
	}
}
