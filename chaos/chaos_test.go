package chaos

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/repd/repd/harness"
)

func TestMain(m *testing.M) {
	code := m.Run()
	harness.RemoveBinaries()
	os.Exit(code)
}

// The fast set: every scenario not marked Soak once, with the seed from
// CHAOS_SEED or the clock, under its first protocol (kill-primary also
// under the other). A failure prints the seed, the schedule and the replay
// command. The soak runs every scenario, in its long form.
func TestScenarios(t *testing.T) {
	bins := needBins(t)
	seed := chaosSeed(t)
	t.Logf("seed %d (rerun: CHAOS_SEED=%d go test ./chaos, or go run ./chaos/cmd/soak -seed N -scenario NAME)", seed, seed)
	for _, sc := range Scenarios {
		if sc.Soak {
			continue
		}
		protos := sc.Protocols[:1]
		if sc.Name == "kill-primary" {
			protos = sc.Protocols
		}
		for _, proto := range protos {
			t.Run(fmt.Sprintf("%s/%s", sc.Name, proto), func(t *testing.T) {
				r := Run(t.Context(), Config{Bins: bins, Protocol: proto}, sc, seed)
				if r.Failed() {
					t.Fatal(r.Format(true))
				}
				t.Log(r.Format(testing.Verbose()))
			})
		}
	}
}

// One short endurance epoch: the long-lived cluster of the soak comes up,
// takes link faults under load, heals, and checks out.
func TestEnduranceEpoch(t *testing.T) {
	bins := needBins(t)
	seed := chaosSeed(t)
	r := Endurance{Bins: bins, Seed: seed, Duration: time.Nanosecond, Epoch: 12 * time.Second, Logf: t.Logf}.Run(t.Context())
	if r.Err != nil || len(r.Violations) > 0 {
		t.Fatalf("seed %d: %v %v\nschedule: %v", seed, r.Err, r.Violations, r.Schedule)
	}
	if len(r.Samples) != 1 || r.Faults == 0 || r.Checked == 0 {
		t.Fatalf("seed %d: one epoch with faults and checked writes expected: %+v", seed, r)
	}
	for i, g := range r.Samples[0].Goroutines {
		if g == 0 || r.Samples[0].RSS[i] == 0 {
			t.Errorf("node %d: no goroutine/RSS sample: %+v", i, r.Samples[0])
		}
	}
}

// needBins skips under -short and builds repd and repctl once.
func needBins(t *testing.T) *harness.Bins {
	t.Helper()
	if testing.Short() {
		t.Skip("process-level chaos scenarios")
	}
	if os.Geteuid() != 0 && os.Getenv("CI") == "true" {
		t.Fatal("the chaos scenarios use 127.0.0.x addresses and setuid; run as root")
	}
	bins, err := harness.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	return bins
}

// chaosSeed is $CHAOS_SEED, or a new seed from the clock.
func chaosSeed(t *testing.T) int64 {
	t.Helper()
	s := os.Getenv("CHAOS_SEED")
	if s == "" {
		return time.Now().UnixNano() % (1 << 40)
	}
	seed, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("CHAOS_SEED=%q: %v", s, err)
	}
	return seed
}
