package config

import (
	"fmt"
	"strings"
)

// The policies of [resource], parsed once into typed values that the engine
// takes as they are. Each zero value is the default. In TOML each is written
// as the word its String returns; any other word is refused with the list
// of valid ones.

// Congestion is resource.on-congestion: what a protocol-A Primary does when
// its journal is full.
type Congestion uint8

// Congestion policies.
const (
	// CongestionBlock: writes wait for room (the default).
	CongestionBlock Congestion = iota
	// CongestionPullAhead: stop shipping to the peer that holds the
	// journal up, mark its bitmap, resync it once the journal drains.
	CongestionPullAhead
)

var congestionNames = []string{"block", "pull-ahead"}

func (c Congestion) String() string { return word(congestionNames, uint8(c)) }

// UnmarshalText implements encoding.TextUnmarshaler.
func (c *Congestion) UnmarshalText(b []byte) error {
	return parseWord(congestionNames, b, (*uint8)(c))
}

// IOErrorPolicy is resource.on-io-error: what a failing local disk does
// (DRBD's on-io-error).
type IOErrorPolicy uint8

// Local disk failure policies.
const (
	// IOErrorDetach: mark the disk Failed and go on without it (the
	// default).
	IOErrorDetach IOErrorPolicy = iota
	// IOErrorPassOn: return the error to the NBD client.
	IOErrorPassOn
)

var ioErrorNames = []string{"detach", "pass-on"}

func (p IOErrorPolicy) String() string { return word(ioErrorNames, uint8(p)) }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *IOErrorPolicy) UnmarshalText(b []byte) error {
	return parseWord(ioErrorNames, b, (*uint8)(p))
}

// SplitBrainPolicy is resource.after-sb-0pri: the automatic split-brain
// resolution when neither side is Primary.
type SplitBrainPolicy uint8

// Split-brain policies.
const (
	// SplitBrainDisconnect: refuse and wait for the operator (the
	// default).
	SplitBrainDisconnect SplitBrainPolicy = iota
	// SplitBrainDiscardZeroChanges: a side that wrote nothing becomes the
	// sync target.
	SplitBrainDiscardZeroChanges
)

var splitBrainNames = []string{"disconnect", "discard-zero-changes"}

func (p SplitBrainPolicy) String() string { return word(splitBrainNames, uint8(p)) }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *SplitBrainPolicy) UnmarshalText(b []byte) error {
	return parseWord(splitBrainNames, b, (*uint8)(p))
}

func word(names []string, v uint8) string {
	if int(v) < len(names) {
		return names[v]
	}
	return fmt.Sprintf("policy(%d)", v)
}

// parseWord sets *v to the index of b in names. The TOML decoder puts the
// key in front of the error.
func parseWord(names []string, b []byte, v *uint8) error {
	s := strings.TrimSpace(string(b))
	for i, name := range names {
		if s == name {
			*v = uint8(i)
			return nil
		}
	}
	return fmt.Errorf("%q: must be %s", s, quoteAll(names))
}

func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	if len(q) == 2 {
		return q[0] + " or " + q[1]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// NoQuorumPolicy is resource.on-no-quorum: what a Primary that lost quorum
// does with writes and flushes.
type NoQuorumPolicy uint8

// No-quorum policies.
const (
	// NoQuorumSuspendIO: writes and flushes wait (the default); they
	// complete if quorum returns before another node is promoted, and
	// fail with EIO once this node learns it was replaced.
	NoQuorumSuspendIO NoQuorumPolicy = iota
	// NoQuorumIOError: writes and flushes fail with EIO at once.
	NoQuorumIOError
)

var noQuorumNames = []string{"suspend-io", "io-error"}

func (p NoQuorumPolicy) String() string { return word(noQuorumNames, uint8(p)) }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *NoQuorumPolicy) UnmarshalText(b []byte) error {
	return parseWord(noQuorumNames, b, (*uint8)(p))
}

// Quorum is resource.quorum: how many votes a node needs, itself included,
// to have quorum. In TOML: "majority", "off", or a number of votes.
type Quorum int

// Quorum settings besides a number of votes. The zero value is "not set":
// validation turns it into majority with three voters or more, else off.
const (
	QuorumUnset    Quorum = 0
	QuorumOff      Quorum = -1
	QuorumMajority Quorum = -2
)

func (q Quorum) String() string {
	switch q {
	case QuorumUnset:
		return "unset"
	case QuorumOff:
		return "off"
	case QuorumMajority:
		return "majority"
	}
	return fmt.Sprint(int(q))
}

// UnmarshalTOML implements toml.Unmarshaler.
func (q *Quorum) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		if x < 1 || x > maxNodes {
			return fmt.Errorf("%d: a number of votes is 1..%d", x, maxNodes)
		}
		*q = Quorum(x)
		return nil
	case string:
		switch strings.TrimSpace(x) {
		case "majority":
			*q = QuorumMajority
			return nil
		case "off":
			*q = QuorumOff
			return nil
		}
	}
	return fmt.Errorf("%v: must be \"majority\", \"off\" or a number of votes", v)
}

// Votes is how many votes quorum needs among voters nodes (0: quorum is
// off).
func (q Quorum) Votes(voters int) int {
	switch q {
	case QuorumOff, QuorumUnset:
		return 0
	case QuorumMajority:
		return voters/2 + 1
	}
	return int(q)
}
