package chaos

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"
)

var testBins *Bins

func TestMain(m *testing.M) {
	code := m.Run()
	if testBins != nil {
		os.RemoveAll(testBins.Dir)
	}
	os.Exit(code)
}

// The fast set: every scenario once, with the seed from CHAOS_SEED or the
// clock, under its first protocol (kill scenarios also under the other).
// A failure prints the seed, the schedule and the replay command.
func TestScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("process-level chaos scenarios")
	}
	if os.Geteuid() != 0 && os.Getenv("CI") == "true" {
		t.Fatal("the chaos scenarios use 127.0.0.x addresses and setuid; run as root")
	}
	var err error
	if testBins == nil {
		if testBins, err = Build("..", raceEnabled); err != nil {
			t.Fatal(err)
		}
	}
	seed := time.Now().UnixNano() % (1 << 40)
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("seed %d (rerun: CHAOS_SEED=%d go test ./chaos, or go run ./chaos/cmd/soak -seed N -scenario NAME)", seed, seed)
	for _, sc := range Scenarios {
		protos := sc.Protocols[:1]
		if sc.Name == "kill-primary" {
			protos = sc.Protocols
		}
		for _, proto := range protos {
			t.Run(fmt.Sprintf("%s/%s", sc.Name, proto), func(t *testing.T) {
				r := Run(Config{Bins: testBins, Protocol: proto}, sc, seed)
				if r.Failed() {
					t.Fatal(r.Format(true))
				}
				t.Log(r.Format(testing.Verbose()))
			})
		}
	}
}
