package protocol

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// A SnapshotReq round-trips; every malformed one is refused as corrupt,
// naming what is wrong.
func TestSnapshotReq(t *testing.T) {
	for _, r := range []SnapshotReq{
		{Name: "nightly"},
		{Name: "a.b-c_1", Nodes: []uint8{0, 2, 15}},
		{Name: "x", All: true},
		{Name: strings.Repeat("z", MaxNameLen), Nodes: []uint8{7}},
	} {
		var got SnapshotReq
		if err := got.Decode(r.Append(nil)); err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		if got.Name != r.Name || got.All != r.All || !bytes.Equal(got.Nodes, r.Nodes) {
			t.Fatalf("%+v decoded as %+v", r, got)
		}
	}
	for _, c := range []struct {
		payload []byte
		want    string
	}{
		{nil, "short"},
		{[]byte{0}, "short"},
		{[]byte{0, 0}, "Snapshot names"},
		{append([]byte{0x82, 0}, "n"...), "flags"},
		{append([]byte{0, 3, 1}, "n"...), "lists 3 nodes"},
		{append([]byte{0, MaxSnapshotNodes + 1}, make([]byte, 100)...), "lists 65 nodes"},
		{append([]byte{SnapAll, 1, 3}, "n"...), "none with all"},
		{append([]byte{0, 2, 3, 3}, "n"...), "node 3 twice"},
		{append([]byte{0, 0}, "bad name"...), "Snapshot names"},
		{append([]byte{0, 0}, "a/../b"...), "Snapshot names"},
		{append([]byte{0, 0}, strings.Repeat("n", MaxNameLen+1)...), "Snapshot names"},
	} {
		var r SnapshotReq
		err := r.Decode(c.payload)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%x: %v, want ErrCorrupt mentioning %q", c.payload, err, c.want)
		}
	}
}

// Snapshot names obey the export-name rule; reasons are cleaned for logs.
func TestSnapshotNameAndReason(t *testing.T) {
	if n, err := DecodeSnapshotName([]byte("backup-20260101T000000Z")); err != nil || n != "backup-20260101T000000Z" {
		t.Fatal(n, err)
	}
	for _, bad := range []string{"", "a b", "r0@x", "\x00", strings.Repeat("n", 65), "é"} {
		if _, err := DecodeSnapshotName([]byte(bad)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if SnapshotReason(nil) != "" {
		t.Fatal("an empty reason is success")
	}
	if r := SnapshotReason([]byte("full\nFAKE LOG LINE\x1b[2J")); strings.ContainsAny(r, "\n\x1b") || r == "" {
		t.Fatalf("reason %q", r)
	}
}

// A peer cannot send a Snapshot frame with a name longer than an export
// name allows, nor a SnapshotReq longer than its largest valid form: the
// Reader refuses them from the header, before reading the payload.
func TestSnapshotFramesBounded(t *testing.T) {
	for _, typ := range []Type{TypeSnapshot, TypeSnapshotReq} {
		fr := rawFrame(Version, typ, nil)
		limit := uint32(MaxPayloadOf(typ))
		putHeader(fr, &Header{Magic: Magic, Version: Version, Type: typ, PayloadLen: limit + 1, RawLen: limit + 1})
		if _, err := NewReader(bytes.NewReader(fr[:HeaderSize])).ReadFrame(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s with %d bytes announced: %v", typ, limit+1, err)
		}
	}
	if MaxPayloadOf(TypeSnapshotReq) > 256 || MaxPayloadOf(TypeSnapshot) > 64 {
		t.Fatal("snapshot frames are not small")
	}
}
