package nbd_test

import (
	"context"
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"github.com/repd/repd/nbd"
	"github.com/repd/repd/nbd/nbdtest"
)

const (
	snap0 = nbd.DirtyBitmapPrefix + "snap0"
	snap1 = nbd.DirtyBitmapPrefix + "snap1"
)

// namedDevice offers the given context names, valid or not.
type namedDevice struct {
	*memDevice
	names []string
}

func (d namedDevice) MetaContexts() []string { return d.names }

func (d namedDevice) BlockStatus(_ context.Context, _ string, _, n int64) ([]nbd.Extent, error) {
	return []nbd.Extent{{Len: n}}, nil
}

func snapServer(dev *sparseDevice) *nbd.Server {
	return &nbd.Server{Exports: []nbd.Export{
		{Name: "r0", Device: newMem(4 << 20)},
		{Name: "r0@snap2", Description: "snapshot snap2 of r0", Device: dev, ReadOnly: true},
	}}
}

// NBD_OPT_LIST_META_CONTEXT answers queries the way qemu-nbd does (no
// query: everything; "NS:" and "qemu:dirty-bitmap:": every name they
// start; a name: itself; each once), with context id 0.
func TestListMetaContext(t *testing.T) {
	addr := serve(t, snapServer(snapDevice()))
	n := negotiate(t, addr, fixedNoZeroes)
	if err := n.StructuredReply(); err != nil {
		t.Fatal(err)
	}
	all := []string{nbd.ContextBaseAllocation, snap0, snap1}
	for _, tc := range []struct {
		export  string
		queries []string
		want    []string
	}{
		{"r0@snap2", nil, all},
		{"r0@snap2", []string{"base:"}, []string{nbd.ContextBaseAllocation}},
		{"r0@snap2", []string{"qemu:"}, []string{snap0, snap1}},
		{"r0@snap2", []string{"qemu:dirty-bitmap:"}, []string{snap0, snap1}},
		{"r0@snap2", []string{snap1, "base:allocation", snap1}, []string{nbd.ContextBaseAllocation, snap1}},
		{"r0@snap2", []string{"qemu:dirty-bitmap:snap", "base:alloc", "x-foo:", "nocolon", ":leaf", ""}, nil},
		{"r0", nil, []string{nbd.ContextBaseAllocation}},
		{"r0", []string{"qemu:"}, nil},
		{"", nil, []string{nbd.ContextBaseAllocation}}, // the default export, r0
	} {
		got, err := n.ListMetaContext(tc.export, tc.queries...)
		if err != nil {
			t.Fatalf("LIST %q %q: %v", tc.export, tc.queries, err)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("LIST %q %q = %q, want %q", tc.export, tc.queries, got, tc.want)
		}
	}
	rs, err := n.Option(nbd.OptListMetaContext, nbdtest.MetaData("r0@snap2"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if id := binary.BigEndian.Uint32(r.Data); id != 0 {
			t.Errorf("LIST reply with context id %d, want 0", id)
		}
	}
	if _, err := n.ListMetaContext("nosuch"); optErr(err) != nbd.RepErrUnknown {
		t.Errorf("LIST for an unknown export: %v, want NBD_REP_ERR_UNKNOWN", err)
	}
	if _, err := n.Go("r0"); err != nil {
		t.Fatal(err)
	}
}

// NBD_OPT_SET_META_CONTEXT selects exact names only, each once, with
// distinct ids; it needs structured replies; each SET replaces the
// selection, also when it fails; the selection counts only for the export
// it named.
func TestSetMetaContext(t *testing.T) {
	dev := snapDevice()
	addr := serve(t, snapServer(dev))

	n := negotiate(t, addr, fixedNoZeroes)
	if _, err := n.SetMetaContext("r0@snap2", nbd.ContextBaseAllocation); optErr(err) != nbd.RepErrInvalid || !strings.Contains(err.Error(), "NBD_OPT_STRUCTURED_REPLY first") {
		t.Fatalf("SET before structured replies: %v, want NBD_REP_ERR_INVALID saying why", err)
	}
	if err := n.StructuredReply(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		queries []string
		want    []string
	}{
		{[]string{"qemu:", "base:", "qemu:dirty-bitmap:", "nocolon", "x-foo:bar"}, nil},
		{[]string{snap1, nbd.ContextBaseAllocation, snap1, nbd.ContextBaseAllocation}, []string{snap1, nbd.ContextBaseAllocation}},
		{nil, nil},
	} {
		ids, err := n.SetMetaContext("r0@snap2", tc.queries...)
		if err != nil {
			t.Fatalf("SET %q: %v", tc.queries, err)
		}
		var got []string
		for _, name := range ids {
			got = append(got, name)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(tc.want))
		if !slices.Equal(got, want) {
			t.Errorf("SET %q selected %q, want %q", tc.queries, got, want)
		}
	}
	if _, err := n.SetMetaContext("nosuch", nbd.ContextBaseAllocation); optErr(err) != nbd.RepErrUnknown {
		t.Errorf("SET for an unknown export: %v", err)
	}

	// The selection is for r0@snap2: entering r0 drops it.
	if _, err := n.SetMetaContext("r0@snap2", nbd.ContextBaseAllocation); err != nil {
		t.Fatal(err)
	}
	c, err := n.Go("r0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := c.Do(nbdtest.Request{Type: nbd.CmdBlockStatus, Length: 4096})
	if err != nil || r.Error != nbd.EINVAL || !strings.Contains(r.Message, "NBD_OPT_SET_META_CONTEXT") {
		t.Fatalf("BLOCK_STATUS on another export than the contexts': %v, error %d %q, want EINVAL", err, r.Error, r.Message)
	}

	// A failed SET leaves nothing selected.
	n = negotiate(t, addr, fixedNoZeroes)
	if err := n.StructuredReply(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.SetMetaContext("r0@snap2", nbd.ContextBaseAllocation); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Option(nbd.OptSetMetaContext, []byte{0, 0, 0, 9}); optErr(err) != nbd.RepErrInvalid {
		t.Fatalf("malformed SET: %v", err)
	}
	c, err = n.Go("r0@snap2")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r, err := c.Do(nbdtest.Request{Type: nbd.CmdBlockStatus, Length: 4096}); err != nil || r.Error != nbd.EINVAL {
		t.Fatalf("BLOCK_STATUS after a failed SET: %v, error %d, want EINVAL", err, r.Error)
	}
}

// Malformed option data is NBD_REP_ERR_INVALID with a message, and the
// negotiation goes on; too many queries, or a selection beyond
// MaxMetaContexts, is NBD_REP_ERR_TOO_BIG.
func TestMetaContextBadOptions(t *testing.T) {
	names := []string{"x-a:1", "x-a:2", "x-a:3", "x-a:4"}
	srv := &nbd.Server{MaxMetaContexts: 3, Exports: []nbd.Export{{Name: "d", Device: namedDevice{newMem(4096), names}}}}
	addr := serve(t, srv)
	n := negotiate(t, addr, fixedNoZeroes)
	if err := n.StructuredReply(); err != nil {
		t.Fatal(err)
	}
	u32 := func(v ...uint32) []byte {
		var b []byte
		for _, x := range v {
			b = binary.BigEndian.AppendUint32(b, x)
		}
		return b
	}
	long := strings.Repeat("x", nbd.MaxString+1)
	many := make([]string, 257)
	for i := range many {
		many[i] = "x-a:1"
	}
	for _, tc := range []struct {
		name string
		data []byte
		want uint32
		msg  string
	}{
		{"empty", nil, nbd.RepErrInvalid, "meta context option of 0 bytes"},
		{"short", u32(0), nbd.RepErrInvalid, "of 4 bytes"},
		{"name beyond the data", u32(100, 0), nbd.RepErrInvalid, "exceeds the option data"},
		{"count beyond the data", u32(0, 5), nbd.RepErrInvalid, "do not fit"},
		{"query beyond the data", append(u32(0, 1, 10), "x-a:"...), nbd.RepErrInvalid, "query 0: length 10 exceeds"},
		{"trailing bytes", append(nbdtest.MetaData("d", "x-a:1"), 0), nbd.RepErrInvalid, "1 bytes after the last query"},
		{"long query", nbdtest.MetaData("d", "x-a:"+long), nbd.RepErrInvalid, "at most 4096"},
		{"long export name", nbdtest.MetaData(long), nbd.RepErrInvalid, "at most 4096"},
		{"many queries", nbdtest.MetaData("d", many...), nbd.RepErrTooBig, "at most 256"},
		{"huge count", u32(0, 1<<31), nbd.RepErrTooBig, "at most 256"},
	} {
		for _, opt := range []uint32{nbd.OptListMetaContext, nbd.OptSetMetaContext} {
			_, err := n.Option(opt, tc.data)
			if optErr(err) != tc.want || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("%s (option %d): %v, want %#x with %q", tc.name, opt, err, tc.want, tc.msg)
			}
		}
	}
	// Four contexts exist; selecting all exceeds MaxMetaContexts (3).
	if _, err := n.SetMetaContext("d", names...); optErr(err) != nbd.RepErrTooBig || !strings.Contains(err.Error(), "at most 3 per connection") {
		t.Fatalf("SET of 4 contexts: %v, want NBD_REP_ERR_TOO_BIG", err)
	}
	// Listing is not bounded by MaxMetaContexts.
	if got, err := n.ListMetaContext("d"); err != nil || len(got) != 5 {
		t.Fatalf("LIST: %q %v", got, err)
	}
	if _, err := n.SetMetaContext("d", names[:3]...); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Go("d"); err != nil {
		t.Fatal(err)
	}
}

// Names a Device offers that are not NAMESPACE:LEAF, are in the base
// namespace, are too long or not UTF-8 are not offered.
func TestMetaContextDeviceNames(t *testing.T) {
	names := []string{"qemu:dirty-bitmap:ok", "nocolon", ":x", "ns:", "base:allocation", "base:other",
		"x-a:" + strings.Repeat("y", nbd.MaxString), "x-a:\xff", "x-a:nul\x00", "x a:space", "qemu:dirty-bitmap:ok", "x-b:ok"}
	addr := serve(t, &nbd.Server{Exports: []nbd.Export{{Name: "d", Device: namedDevice{newMem(4096), names}}}})
	n := negotiate(t, addr, fixedNoZeroes)
	if err := n.StructuredReply(); err != nil {
		t.Fatal(err)
	}
	got, err := n.ListMetaContext("d")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{nbd.ContextBaseAllocation, "qemu:dirty-bitmap:ok", "x-b:ok"}; !slices.Equal(got, want) {
		t.Fatalf("LIST = %q, want %q", got, want)
	}
}

// After STARTTLS nothing negotiated before counts: structured replies and
// contexts must be negotiated again.
func TestStartTLSResetsNegotiation(t *testing.T) {
	p := getPKI(t)
	addr := serve(t, &nbd.Server{TLS: p.serverNoMutual, TLSMode: nbd.TLSAllow,
		Exports: []nbd.Export{{Name: "d", Device: snapDevice()}}})
	n := negotiate(t, addr, fixedNoZeroes)
	if err := n.StructuredReply(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.SetMetaContext("d", nbd.ContextBaseAllocation); err != nil {
		t.Fatal(err)
	}
	if err := n.StartTLS(p.clientTLS(nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := n.SetMetaContext("d", nbd.ContextBaseAllocation); optErr(err) != nbd.RepErrInvalid {
		t.Fatalf("SET after STARTTLS without structured replies again: %v, want NBD_REP_ERR_INVALID", err)
	}
	c, err := n.Go("d")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Flags&nbd.FlagSendDF != 0 {
		t.Errorf("NBD_FLAG_SEND_DF after STARTTLS dropped structured replies")
	}
	got := make([]byte, 4096)
	if err := c.Read(got, 0); err != nil { // a simple reply, as the client expects
		t.Fatal(err)
	}
	if r, err := c.Do(nbdtest.Request{Type: nbd.CmdBlockStatus, Length: 4096}); err != nil || r.Error != nbd.EINVAL {
		t.Fatalf("BLOCK_STATUS with contexts chosen before STARTTLS: %v, error %d, want EINVAL", err, r.Error)
	}
}
