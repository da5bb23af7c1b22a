package replica

import "fmt"

// UnmarshalText implementations, so a Status decodes from its JSON form
// (repctl reads it back from the admin API).

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Role) UnmarshalText(b []byte) error {
	switch string(b) {
	case "Primary":
		*r = Primary
	case "Secondary":
		*r = Secondary
	default:
		return fmt.Errorf("unknown role %q", b)
	}
	return nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (c *ConnState) UnmarshalText(b []byte) error {
	for _, s := range []ConnState{StandAlone, Connecting, Connected} {
		if s.String() == string(b) {
			*c = s
			return nil
		}
	}
	return fmt.Errorf("unknown connection state %q", b)
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Repl) UnmarshalText(b []byte) error {
	for i, name := range replNames {
		if name == string(b) {
			*r = Repl(i)
			return nil
		}
	}
	return fmt.Errorf("unknown replication state %q", b)
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Protocol) UnmarshalText(b []byte) error {
	if len(b) != 1 || (b[0] != 'A' && b[0] != 'C') {
		return fmt.Errorf("unknown protocol %q", b)
	}
	*p = Protocol(b[0])
	return nil
}
