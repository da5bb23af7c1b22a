package link

import (
	"testing"

	"github.com/repd/repd/faultnet"
)

func TestMeasureLink(t *testing.T) {
	l, _ := Lookup("lan")
	rtt, err := measure(l, 5)
	if err != nil {
		t.Fatal(err)
	}
	if rtt < l.RTT {
		t.Errorf("measured %s through a link adding %s", rtt, l.RTT)
	}
}

func TestLinkWindowCoversTheBandwidthDelayProduct(t *testing.T) {
	wan, _ := Lookup("wan")
	// 10 Gbit/s over 15 ms + 3 ms one way: 22.5 MB.
	if w := wan.Window(); w < 22_000_000 || w > 23_000_000 {
		t.Errorf("wan window %d", w)
	}
	lan, _ := Lookup("lan")
	if w := lan.Window(); w != faultnet.DefaultMaxInFlight {
		t.Errorf("lan window %d, want the 4 MiB floor", w)
	}
}
