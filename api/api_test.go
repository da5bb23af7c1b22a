package api

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// TestStatusRoundTrip: a status survives JSON both ways, with the states
// written as the words users know.
func TestStatusRoundTrip(t *testing.T) {
	pct := 42.5
	in := Status{Resource: "r0", Node: "alpha", Role: Primary, Disk: "UpToDate", Protocol: ProtocolA,
		Peers: []PeerStatus{{Name: "beta", Connection: Connected, Replication: SyncSource, SyncPercent: &pct}}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"role":"Primary"`, `"protocol":"A"`, `"connection":"Connected"`, `"replication":"SyncSource"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
	var out Status
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n%v\n%v", in, out)
	}
	if p, ok := out.Peer("beta"); !ok || p.Replication != SyncSource {
		t.Fatalf("Peer(beta) = %v, %v", p, ok)
	}
}

func TestUnknownWordsRefused(t *testing.T) {
	var r Role
	var c ConnState
	var rp Repl
	var p Protocol
	for _, err := range []error{r.UnmarshalText([]byte("Boss")), c.UnmarshalText([]byte("Up")),
		rp.UnmarshalText([]byte("Syncing")), p.UnmarshalText([]byte("B"))} {
		if err == nil {
			t.Error("an unknown word was accepted")
		}
	}
	for _, s := range []Repl{ReplOff, Established, SyncSource, SyncTarget, PausedSync, Ahead, Behind, VerifySource, VerifyTarget} {
		var back Repl
		if err := back.UnmarshalText([]byte(s.String())); err != nil || back != s {
			t.Errorf("%v: %v %v", s, back, err)
		}
	}
}
