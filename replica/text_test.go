package replica

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestStatusJSONRoundTrip(t *testing.T) {
	pct := 42.5
	in := Status{Resource: "r0", Node: "alpha", Role: Primary, Disk: "UpToDate", Protocol: ProtocolA,
		Peers: []PeerStatus{{Name: "beta", Connection: Connecting, Replication: Behind, SyncPercent: &pct}}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Status
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n in %+v\nout %+v", in, out)
	}
	var r Repl
	if err := r.UnmarshalText([]byte("Sideways")); err == nil {
		t.Fatal("bad replication state accepted")
	}
}
