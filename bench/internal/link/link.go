// Package link is the shaping of the replication link in the benchmark's
// link targets and drills (faultnet proxies between the nodes), and its
// measurement.
package link

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/repd/repd/bench/internal/result"
	"github.com/repd/repd/faultnet"
)

// Profile is the shaping of the replication link between nodes: a
// faultnet proxy on every link (harness.Options.Proxies), so that every
// peer connection crosses one.
//
// RTT is the added round-trip time, split evenly between the two
// directions; each direction also gets a uniform random 0..Jitter on top
// (bytes are never reordered). Bandwidth caps each direction (bytes/s).
type Profile struct {
	Name      string
	Desc      string
	RTT       time.Duration
	Jitter    time.Duration // per direction
	Bandwidth int64         // bytes per second per direction; 0 unlimited
}

// Profiles are the links the benchmark knows, in chart order.
var Profiles = []Profile{
	{Name: "lan", Desc: "LAN: +0.5 ms RTT, jitter 0..50 µs each way", RTT: 500 * time.Microsecond, Jitter: 50 * time.Microsecond},
	{Name: "metro", Desc: "metro: +5 ms RTT, jitter 0..0.5 ms each way", RTT: 5 * time.Millisecond, Jitter: 500 * time.Microsecond},
	{Name: "wan", Desc: "WAN: +30 ms RTT, jitter 0..3 ms each way", RTT: 30 * time.Millisecond, Jitter: 3 * time.Millisecond},
	{Name: "lan-100mbit", Desc: "LAN capped at 100 Mbit/s each way: +0.5 ms RTT, jitter 0..50 µs", RTT: 500 * time.Microsecond, Jitter: 50 * time.Microsecond, Bandwidth: 100e6 / 8},
}

// Lookup finds a profile by name.
func Lookup(name string) (Profile, bool) {
	for _, l := range Profiles {
		if l.Name == name {
			return l, true
		}
	}
	return Profile{}, false
}

// Names is every profile's name, comma-separated.
func Names() string {
	var names []string
	for _, l := range Profiles {
		names = append(names, l.Name)
	}
	return strings.Join(names, ",")
}

// Link is one direction's faultnet shaping.
func (l Profile) Link() faultnet.Link {
	return faultnet.Link{Delay: l.RTT / 2, Jitter: l.Jitter, Bandwidth: l.Bandwidth}
}

// linkBits is the line rate of a link without a Bandwidth cap: the proxy
// holds up to a bandwidth-delay product of it in flight per direction.
const linkBits = 10e9

// Window is how many bytes a proxy shaped like l holds in flight per
// direction (faultnet's MaxInFlight): the bandwidth-delay product of a
// 10 Gbit/s line (or of the Bandwidth cap) over the one-way delay plus
// jitter, at least faultnet's default of 4 MiB. A fixed window would cap a
// long link's throughput at window/delay (4 MiB over 17 ms is 2 Gbit/s),
// which is not what a link profile without a bandwidth cap means.
func (l Profile) Window() int64 {
	rate := linkBits / 8
	if l.Bandwidth > 0 {
		rate = float64(l.Bandwidth)
	}
	w := int64(rate * (l.RTT/2 + l.Jitter).Seconds())
	return max(w, faultnet.DefaultMaxInFlight)
}

// RTTms is the added round trip in milliseconds (for charts).
func (l Profile) RTTms() float64 { return float64(l.RTT) / float64(time.Millisecond) }

// String is the link part of a target's description.
func (l Profile) String() string {
	s := fmt.Sprintf("+%s RTT", l.RTT)
	if l.Jitter > 0 {
		s += fmt.Sprintf(", jitter ≤%s each way", l.Jitter)
	}
	if l.Bandwidth > 0 {
		s += fmt.Sprintf(", %.0f Mbit/s", float64(l.Bandwidth)*8/1e6)
	}
	return s
}

// Measure measures each named profile through a proxy to a loopback echo
// server (about 25 round trips each).
func Measure(ctx context.Context, names []string) []result.LinkInfo {
	var out []result.LinkInfo
	for _, name := range names {
		l, ok := Lookup(name)
		if !ok || ctx.Err() != nil {
			continue
		}
		info := result.LinkInfo{Name: l.Name, Desc: l.Desc, RTTms: l.RTTms(), BandwidthMbit: float64(l.Bandwidth) * 8 / 1e6}
		rtt, err := measure(l, 25)
		if err != nil {
			info.Error = err.Error()
		}
		info.MeasuredRTTms = float64(rtt.Microseconds()) / 1e3
		out = append(out, info)
	}
	return out
}

func measure(l Profile, rounds int) (time.Duration, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	p, err := faultnet.NewProxy("127.0.0.1:0", ln.Addr().String(), 1)
	if err != nil {
		return 0, err
	}
	defer p.Close()
	p.SetLink(l.Link(), l.Link())
	if err := p.Start(); err != nil {
		return 0, err
	}
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	msg, back := make([]byte, 4096), make([]byte, 4096)
	var rtts []time.Duration
	for range rounds {
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return 0, err
		}
		rtts = append(rtts, time.Since(t0))
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2], nil
}
