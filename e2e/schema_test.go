package e2e

import (
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/repd/repd/api"
)

// documentedStatusFields reads the field names of the `status --json`
// table in README.md.
func documentedStatusFields(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	i := strings.Index(text, "| field | meaning |")
	if i < 0 {
		t.Fatal("README.md has no status field table")
	}
	table := text[i:]
	table = table[:strings.Index(table, "\n\n")]
	names := map[string]bool{}
	name := regexp.MustCompile("`([a-z_]+)(\\[\\])?`")
	for _, line := range strings.Split(table, "\n")[2:] {
		cells := strings.Split(line, "|")
		if len(cells) < 3 {
			continue
		}
		for _, m := range name.FindAllStringSubmatch(cells[1], -1) {
			names[m[1]] = true
		}
	}
	return names
}

func jsonFields(typ reflect.Type) []string {
	var out []string
	for i := 0; i < typ.NumField(); i++ {
		tag := strings.Split(typ.Field(i).Tag.Get("json"), ",")[0]
		if tag != "" && tag != "-" {
			out = append(out, tag)
		}
	}
	return out
}

// TestStatusJSONSchema holds README's status table and the code to each
// other, and checks a live `repctl status --json` against both.
func TestStatusJSONSchema(t *testing.T) {
	doc := documentedStatusFields(t)
	code := map[string]bool{}
	for _, f := range append(jsonFields(reflect.TypeOf(api.Status{})), jsonFields(reflect.TypeOf(api.PeerStatus{}))...) {
		code[f] = true
		if !doc[f] {
			t.Errorf("status field %q is not documented in README.md", f)
		}
	}
	for f := range doc {
		if !code[f] {
			t.Errorf("README.md documents status field %q, which the code does not have", f)
		}
	}
	c := newCluster(t, clusterOpts{nodes: 2, size: "16MiB"})
	p := upCluster(t, c)
	var live map[string]any
	if err := json.Unmarshal([]byte(p.mustCtl("status", "--json")), &live); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"resource", "node", "role", "disk", "protocol", "size", "current_uuid", "journal_bytes", "journal_max", "journal_age_ms", "writes", "peers"} {
		if _, ok := live[k]; !ok {
			t.Errorf("status --json lacks %q", k)
		}
	}
	peers, _ := live["peers"].([]any)
	if len(peers) != 1 {
		t.Fatalf("status --json peers: %v", live["peers"])
	}
	for k := range peers[0].(map[string]any) {
		if !doc[k] {
			t.Errorf("live peer field %q is undocumented", k)
		}
	}
	for _, k := range []string{"name", "connection", "replication", "role", "disk", "out_of_sync_kib", "bytes_sent", "bytes_received"} {
		if _, ok := peers[0].(map[string]any)[k]; !ok {
			t.Errorf("live peer status lacks %q", k)
		}
	}
	if r := live["role"]; r != "Primary" {
		t.Errorf("role = %v", r)
	}
	// Values of the enumerations are the documented words.
	st := p.status()
	if st.Peers[0].Replication != api.Established || st.Peers[0].Connection != api.Connected {
		t.Errorf("peer states %+v", st.Peers[0])
	}
}
