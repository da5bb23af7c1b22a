// Package config reads a repd resource file: one TOML file, the same on every
// node, naming the resource and its nodes.
//
//	[resource]
//	name     = "r0"
//	size     = "1GiB"
//	protocol = "C"
//
//	[[node]]
//	name  = "alpha"
//	disk  = "/var/lib/repd/r0-alpha.img"
//	meta  = "/var/lib/repd/r0-alpha.meta"
//	nbd   = "127.0.0.1:10809"
//	peer  = "127.0.0.1:7789"
//	admin = "/run/repd/r0-alpha.sock"
//
// Every bad input is refused by Load with an error that names the field.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
)

// maxNodes is the most nodes a resource may have.
const maxNodes = 16

// File is a parsed and validated resource file.
type File struct {
	Resource Resource `toml:"resource"`
	Nodes    []Node   `toml:"node"`
	path     string
}

// Resource is the [resource] table.
type Resource struct {
	Name     string       `toml:"name"`
	Size     Bytes        `toml:"size"`
	Protocol api.Protocol `toml:"protocol"` // 0 until validated: then A or C (default)
	// BlockSize is the bitmap granularity: the unit of out-of-sync tracking,
	// resync and verify. A power of two from 4 KiB to 1 MiB.
	BlockSize  Bytes  `toml:"block-size"`
	SecretFile string `toml:"secret-file"`
	// Insecure lets a resource of several nodes run its peer links
	// without authentication (no secret-file, no TLS): anyone who reaches
	// a peer port can then write to the device. Unsafe; for a trusted
	// private network only.
	Insecure        bool       `toml:"insecure"`
	Timeout         Duration   `toml:"timeout"`
	ConnectInterval Duration   `toml:"connect-interval"`
	JournalSize     Bytes      `toml:"journal-size"`
	OnCongestion    Congestion `toml:"on-congestion"`
	// OnIOError is the local disk failure policy (DRBD's on-io-error).
	OnIOError        IOErrorPolicy  `toml:"on-io-error"`
	Compression      protocol.Codec `toml:"compression"`
	CompressionLevel int            `toml:"compression-level"`
	ALExtents        int            `toml:"al-extents"`
	AdminGroup       string         `toml:"admin-group"`
	// CSums: checksum-based resync (the target sends block hashes, the
	// source sends only the blocks that differ).
	CSums bool `toml:"csums"`
	// ResyncRate caps resync and verify traffic (bytes/s; 0 = unlimited).
	ResyncRate Bytes `toml:"resync-rate"`
	// ResyncMinRate is what resync slows down to while the application
	// writes (DRBD's c-min-rate; 0 = resync does not yield).
	ResyncMinRate Bytes            `toml:"resync-min-rate"`
	AfterSB0Pri   SplitBrainPolicy `toml:"after-sb-0pri"`
	// Quorum: "majority" (the default with three voters or more: data
	// nodes and witnesses), "off" (the default with two) or a number of
	// votes, more than half of the voters.
	Quorum Quorum `toml:"quorum"`
	// OnNoQuorum: what a Primary without quorum does with I/O.
	OnNoQuorum NoQuorumPolicy `toml:"on-no-quorum"`
	// AutoPromote: the nodes that keep quorum elect a successor when the
	// Primary is lost. Needs quorum.
	AutoPromote bool `toml:"auto-promote"`
	// AutoFailback: a Primary steps down for an in-sync node of higher
	// priority. Needs auto-promote.
	AutoFailback bool `toml:"auto-failback"`
	// TLS on the peer link (transport.go): this node's certificate and key
	// and the CA that signed every node's, as PEM files (relative to the
	// resource file); all three or none.
	TLSCert string `toml:"tls-cert"`
	TLSKey  string `toml:"tls-key"`
	TLSCA   string `toml:"tls-ca"`
	// DedupIndexSize bounds each peer's dedup index (default 64MiB; 0
	// disables deduplication).
	DedupIndexSize *Bytes `toml:"dedup-index-size"`
	// NBDExposure: nbd-tls, nbd-tls-cert/-key/-ca, nbd-max-connections,
	// nbd-write-timeout (nbd.go).
	NBDExposure
	// SnapshotStoreSize is how many bytes of preserved data each node's
	// snapshot store may hold (copy-on-write of the chunks overwritten
	// after a snapshot). 0, the default, turns snapshots off.
	SnapshotStoreSize Bytes `toml:"snapshot-store-size"`
	// SnapshotReadMinRate is what reads of snapshot exports (backups)
	// slow down to while the node writes: application writes on a
	// Primary, replicated ones on a Secondary (as resync-min-rate does
	// for resync). Default DefaultSnapshotReadMinRate; "0": they do not
	// yield.
	SnapshotReadMinRate *Bytes `toml:"snapshot-read-min-rate"`
	// CPUMask pins every node's threads to these CPUs (DRBD's cpu-mask,
	// hexadecimal); a node's own cpu-mask takes precedence. Empty: the
	// scheduler decides.
	CPUMask CPUMask `toml:"cpu-mask"`
}

// DefaultSnapshotReadMinRate is resource.snapshot-read-min-rate when left
// out. The bench's backup drill (fio 4k QD32 on the Primary, full backups
// from the Secondary back to back, 2-vCPU VM, lazy snapshots): unpaced
// 0.49x of the IOPS without a backup, at 32 MiB/s 0.69x, at 16 MiB/s
// 0.62-0.75x in four runs (runs vary by 0.15). A full backup of 1 GiB
// under constant writes then takes about a minute; with nothing writing
// it goes at full speed.
const DefaultSnapshotReadMinRate = 16 << 20

// SnapshotReadMinRateBytes is resource.snapshot-read-min-rate in bytes/s
// (0: snapshot reads do not yield).
func (f *File) SnapshotReadMinRateBytes() int64 {
	if f.Resource.SnapshotReadMinRate == nil {
		return DefaultSnapshotReadMinRate
	}
	return int64(*f.Resource.SnapshotReadMinRate)
}

// Node is one [[node]] table.
type Node struct {
	Name string `toml:"name"`
	ID   *int   `toml:"id"`
	// Disk is the data's file or block device, or "none" for a witness: a
	// node that stores no data, votes, and is never Primary.
	Disk string `toml:"disk"`
	// Priority ranks the candidates of an automatic failover (higher
	// first, after the freshness of their data).
	Priority int    `toml:"priority"`
	Meta     string `toml:"meta"`
	NBD      string `toml:"nbd"`
	Peer     string `toml:"peer"`
	// PeerListen, if set, is where this node listens for peers, while the
	// others dial Peer: for a proxy or NAT between them (link shaping in
	// tests and benchmarks, a replication proxy on a WAN).
	PeerListen string `toml:"peer-listen"`
	Admin      string `toml:"admin"`
	Metrics    string `toml:"metrics"`
	// SnapshotStore is the node's snapshot store file (default: Meta +
	// ".snap"); used when resource.snapshot-store-size is set.
	SnapshotStore string `toml:"snapshot-store"`
	// CPUMask pins this node's threads (the nodes of a resource are
	// usually different machines); it takes precedence over the
	// resource's cpu-mask.
	CPUMask CPUMask `toml:"cpu-mask"`
}

// minSnapshotStoreSize is the smallest snapshot-store-size other than 0.
const minSnapshotStoreSize = 1 << 20

// Defaults applied by Load to fields left out. The policies' defaults are
// their zero values (policy.go); compression's is protocol.CodecNone.
const (
	defaultProtocol    = api.ProtocolC
	defaultBlockSize   = 4096
	DefaultTimeout     = 5 * time.Second
	DefaultConnect     = 200 * time.Millisecond
	DefaultJournalSize = 64 << 20
	DefaultALExtents   = 1237 // DRBD's default al-extents
)

// Load reads, parses and validates the resource file at path.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	f, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f.path = path
	if err := f.checkTLSFiles(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := f.checkNBDTLSFiles(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := f.checkSecretFile(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Parse parses and validates a resource file's contents.
func Parse(data []byte) (*File, error) {
	var f File
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, err
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("unknown key %s", strings.Join(keys, ", "))
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

func (f *File) validate() error {
	r := &f.Resource
	if r.Name == "" {
		return errors.New("resource.name: missing")
	}
	if !validName(r.Name) {
		return fmt.Errorf("resource.name %q: use letters, digits, '-', '_' or '.' (at most 64)", r.Name)
	}
	if r.Size <= 0 {
		return errors.New("resource.size: missing or not positive (e.g. size = \"1GiB\")")
	}
	if r.Protocol == 0 {
		r.Protocol = defaultProtocol
	}
	if r.BlockSize == 0 {
		r.BlockSize = defaultBlockSize
	}
	if r.BlockSize < 4096 || r.BlockSize > 1<<20 || r.BlockSize&(r.BlockSize-1) != 0 {
		return fmt.Errorf("resource.block-size %d: must be a power of two from 4KiB to 1MiB", r.BlockSize)
	}
	if r.Size%4096 != 0 {
		return fmt.Errorf("resource.size %d: must be a multiple of 4KiB", r.Size)
	}
	if r.Timeout == 0 {
		r.Timeout = Duration(DefaultTimeout)
	}
	if r.Timeout < 0 {
		return errors.New("resource.timeout: must be positive")
	}
	if r.ConnectInterval == 0 {
		r.ConnectInterval = Duration(DefaultConnect)
	}
	if r.ConnectInterval < 0 {
		return errors.New("resource.connect-interval: must be positive")
	}
	if r.JournalSize == 0 {
		r.JournalSize = DefaultJournalSize
	}
	if r.JournalSize < 1<<20 {
		return fmt.Errorf("resource.journal-size %d: must be at least 1MiB", r.JournalSize)
	}
	if r.CompressionLevel < 0 || r.CompressionLevel > 22 {
		return fmt.Errorf("resource.compression-level %d: must be 0..22", r.CompressionLevel)
	}
	if err := r.validateTransport(); err != nil {
		return err
	}
	if err := r.validateNBD(); err != nil {
		return err
	}
	if r.ResyncRate < 0 || r.ResyncMinRate < 0 {
		return fmt.Errorf("resource.resync-rate and resync-min-rate must not be negative")
	}
	if r.SnapshotStoreSize != 0 && r.SnapshotStoreSize < minSnapshotStoreSize {
		return fmt.Errorf("resource.snapshot-store-size %d: must be 0 (snapshots off) or at least 1MiB", r.SnapshotStoreSize)
	}
	if v := r.SnapshotReadMinRate; v != nil && *v != 0 && *v < 1<<20 {
		return fmt.Errorf("resource.snapshot-read-min-rate %d: must be 0 (snapshot reads do not yield) or at least 1MiB (bytes per second)", *v)
	}
	if r.ALExtents == 0 {
		r.ALExtents = DefaultALExtents
	}
	if r.ALExtents < 7 || r.ALExtents > 65534 {
		return fmt.Errorf("resource.al-extents %d: must be 7..65534", r.ALExtents)
	}
	if len(f.Nodes) == 0 {
		return errors.New("node: at least one [[node]] is required")
	}
	if len(f.Nodes) > maxNodes {
		return fmt.Errorf("node: %d nodes, at most %d", len(f.Nodes), maxNodes)
	}
	names := map[string]int{}
	ids := map[int]string{}
	witnesses := 0
	peers := map[string]string{}
	for i := range f.Nodes {
		n := &f.Nodes[i]
		at := fmt.Sprintf("node[%d]", i)
		if n.Name == "" {
			return fmt.Errorf("%s.name: missing", at)
		}
		if !validName(n.Name) {
			return fmt.Errorf("%s.name %q: use letters, digits, '-', '_' or '.'", at, n.Name)
		}
		at = fmt.Sprintf("node %q", n.Name)
		if j, dup := names[n.Name]; dup {
			return fmt.Errorf("%s: duplicate name (also node[%d])", at, j)
		}
		names[n.Name] = i
		if n.ID == nil {
			id := i
			n.ID = &id
		}
		if *n.ID < 0 || *n.ID >= maxNodes {
			return fmt.Errorf("%s: id %d out of range 0..%d", at, *n.ID, maxNodes-1)
		}
		if other, dup := ids[*n.ID]; dup {
			return fmt.Errorf("%s: duplicate id %d (also node %q)", at, *n.ID, other)
		}
		ids[*n.ID] = n.Name
		for _, fld := range []struct{ key, val string }{{"disk", n.Disk}, {"meta", n.Meta}, {"admin", n.Admin}} {
			if fld.val == "" {
				return fmt.Errorf("%s.%s: missing (a witness has disk = \"none\" and a small state file as meta)", at, fld.key)
			}
		}
		if n.NBD == "" && !n.Witness() {
			return fmt.Errorf("%s.nbd: missing", at)
		}
		if n.Witness() && n.NBD != "" {
			return fmt.Errorf("%s.nbd: a witness (disk = \"none\") serves no data; remove nbd", at)
		}
		if n.Disk == n.Meta {
			return fmt.Errorf("%s.meta: must differ from disk %q", at, n.Disk)
		}
		if n.SnapshotStore != "" && n.Witness() {
			return fmt.Errorf("%s.snapshot-store: a witness (disk = \"none\") stores no data and takes no snapshots; remove snapshot-store", at)
		}
		if sp := n.SnapshotStorePath(); sp != "" && (sp == n.Disk || sp == n.Meta) {
			return fmt.Errorf("%s.snapshot-store: must differ from disk and meta (%q)", at, sp)
		}
		if n.NBD != "" {
			if _, _, err := SplitListen(n.NBD); err != nil {
				return fmt.Errorf("%s.nbd: %w", at, err)
			}
		}
		if n.Witness() {
			witnesses++
		}
		if len(f.Nodes) > 1 && n.Peer == "" {
			return fmt.Errorf("%s.peer: missing (a resource with several nodes needs a peer address on each)", at)
		}
		if n.Peer != "" {
			if _, _, err := net.SplitHostPort(n.Peer); err != nil {
				return fmt.Errorf("%s.peer %q: %w", at, n.Peer, err)
			}
			if other, dup := peers[n.Peer]; dup {
				return fmt.Errorf("%s.peer: duplicate address %s (also node %q)", at, n.Peer, other)
			}
			peers[n.Peer] = n.Name
		}
		if n.PeerListen != "" {
			if n.Peer == "" {
				return fmt.Errorf("%s.peer-listen: needs peer too (the address the others dial)", at)
			}
			if _, _, err := net.SplitHostPort(n.PeerListen); err != nil {
				return fmt.Errorf("%s.peer-listen %q: %w", at, n.PeerListen, err)
			}
			if other, dup := peers[n.PeerListen]; dup && other != n.Name {
				return fmt.Errorf("%s.peer-listen: duplicate address %s (also node %q)", at, n.PeerListen, other)
			}
			peers[n.PeerListen] = n.Name
		}
		if n.Metrics != "" {
			if _, _, err := net.SplitHostPort(n.Metrics); err != nil {
				return fmt.Errorf("%s.metrics %q: %w", at, n.Metrics, err)
			}
		}
	}
	if len(f.Nodes) > 1 && r.SecretFile == "" && r.TLSCert == "" && !r.Insecure {
		return fmt.Errorf("resource %s: %d nodes and no peer authentication: whoever reaches a peer port could write to the device. "+
			"Give every node the same secret: `head -c 32 /dev/urandom | base64 > /etc/repd/%s.secret; chmod 600 /etc/repd/%s.secret` "+
			"and secret-file = \"%s.secret\" (or TLS: tls-cert, tls-key, tls-ca); insecure = true runs without (unsafe: a trusted private network only)",
			r.Name, len(f.Nodes), r.Name, r.Name, r.Name)
	}
	if witnesses == len(f.Nodes) {
		return errors.New("node: every node is a witness (disk = \"none\"); at least one must hold the data")
	}
	if err := r.validateQuorum(len(f.Nodes)); err != nil {
		return err
	}
	// Nodes on one host (same peer host, or a single-host test cluster) must
	// not share local resources.
	for i := range f.Nodes {
		for j := i + 1; j < len(f.Nodes); j++ {
			a, b := &f.Nodes[i], &f.Nodes[j]
			if !sameHost(a.Peer, b.Peer) {
				continue
			}
			for _, fld := range []struct{ key, x, y string }{
				{"disk", a.Disk, b.Disk}, {"meta", a.Meta, b.Meta}, {"nbd", a.NBD, b.NBD},
				{"admin", a.Admin, b.Admin}, {"metrics", a.Metrics, b.Metrics},
				{"snapshot-store", a.SnapshotStorePath(), b.SnapshotStorePath()},
			} {
				if fld.x != "" && fld.x != "none" && fld.x == fld.y {
					return fmt.Errorf("node %q.%s: duplicate %q (also node %q on the same host)", b.Name, fld.key, fld.x, a.Name)
				}
			}
		}
	}
	return nil
}

// validateQuorum resolves the quorum default for voters nodes and refuses
// settings that allow two nodes to have quorum apart.
func (r *Resource) validateQuorum(voters int) error {
	if r.Quorum == QuorumUnset {
		r.Quorum = QuorumOff
		if voters >= 3 {
			r.Quorum = QuorumMajority
		}
	}
	if need := r.Quorum.Votes(voters); need > 0 {
		if need > voters {
			return fmt.Errorf("resource.quorum %d: more votes than the %d nodes of the resource", need, voters)
		}
		if 2*need <= voters {
			return fmt.Errorf("resource.quorum %d: with %d voters, two halves of a partition could both have %d votes; use at least %d, or \"majority\"", need, voters, need, voters/2+1)
		}
	}
	if r.AutoPromote && r.Quorum == QuorumOff {
		if voters < 3 {
			return fmt.Errorf("resource.auto-promote needs quorum, and %d nodes cannot have it safely: add a witness (a [[node]] with disk = \"none\") and set quorum = \"majority\"", voters)
		}
		return errors.New("resource.auto-promote needs quorum: set quorum = \"majority\" (or a number of votes), not \"off\"")
	}
	if r.AutoFailback && !r.AutoPromote {
		return errors.New("resource.auto-failback needs auto-promote = true")
	}
	return nil
}

// sameHost reports whether two peer addresses may be the same machine: equal
// hosts, or both loopback (a test cluster on one machine).
func sameHost(a, b string) bool {
	ha, _, err1 := net.SplitHostPort(a)
	hb, _, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil {
		return true
	}
	if ha == hb {
		return true
	}
	ia, ib := net.ParseIP(ha), net.ParseIP(hb)
	return ia != nil && ib != nil && ia.IsLoopback() && ib.IsLoopback()
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range s {
		ok := c == '-' || c == '_' || c == '.' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if !ok {
			return false
		}
	}
	return true
}

// SplitListen parses an NBD listen address: "host:port", or "unix:/path".
func SplitListen(addr string) (network, address string, err error) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		if p == "" || !filepath.IsAbs(p) {
			return "", "", fmt.Errorf("%q: unix socket path must be absolute", addr)
		}
		return "unix", p, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", "", fmt.Errorf("%q: want host:port or unix:/path: %w", addr, err)
	}
	return "tcp", addr, nil
}

// Witness reports whether the node is a witness (disk = "none").
func (n *Node) Witness() bool { return n.Disk == "none" }

// SnapshotStorePath is the node's snapshot store file: snapshot-store, or
// the meta file's path with ".snap" appended; "" for a witness.
func (n *Node) SnapshotStorePath() string {
	switch {
	case n.Witness():
		return ""
	case n.SnapshotStore != "":
		return n.SnapshotStore
	}
	return n.Meta + ".snap"
}

// Node returns the node called name.
func (f *File) Node(name string) (*Node, error) {
	for i := range f.Nodes {
		if f.Nodes[i].Name == name {
			return &f.Nodes[i], nil
		}
	}
	known := make([]string, len(f.Nodes))
	for i := range f.Nodes {
		known[i] = f.Nodes[i].Name
	}
	return nil, fmt.Errorf("no node %q in the resource file (nodes: %s)", name, strings.Join(known, ", "))
}

// checkSecretFile refuses a secret file that is missing, not a regular
// file, or open to group or others. It needs no read permission on the
// file (repctl check-config may run as an admin-group user).
func (f *File) checkSecretFile() error {
	p := f.Resource.SecretFile
	if p == "" {
		return nil
	}
	p = f.rel(p)
	fi, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("resource.secret-file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("resource.secret-file %s: not a regular file (%s)", p, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("resource.secret-file %s: mode %04o lets group or others read or change the secret; chmod 600 %s", p, perm, p)
	}
	return nil
}

// Secret reads the shared secret named by resource.secret-file (relative
// paths are relative to the resource file). No file configured → nil.
func (f *File) Secret() ([]byte, error) {
	p := f.Resource.SecretFile
	if p == "" {
		return nil, nil
	}
	if err := f.checkSecretFile(); err != nil {
		return nil, err
	}
	p = f.rel(p)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("resource.secret-file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if len(s) < 8 {
		return nil, fmt.Errorf("resource.secret-file %s: secret is shorter than 8 characters", p)
	}
	return []byte(s), nil
}

// Bytes is a size in bytes; in TOML an integer or a string such as "1GiB",
// "512M", "4k" (binary units).
type Bytes int64

// UnmarshalTOML implements toml.Unmarshaler.
func (b *Bytes) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		*b = Bytes(x)
		return nil
	case string:
		n, err := ParseBytes(x)
		*b = Bytes(n)
		return err
	}
	return fmt.Errorf("size %v: want an integer or a string like \"1GiB\"", v)
}

// ParseBytes parses "1GiB", "512M", "4k", "4096".
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	lower := strings.ToLower(t)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"tib", 1 << 40}, {"gib", 1 << 30}, {"mib", 1 << 20}, {"kib", 1 << 10}, {"t", 1 << 40}, {"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}, {"b", 1}} {
		if strings.HasSuffix(lower, u.suffix) {
			mult = u.m
			t = strings.TrimSpace(t[:len(t)-len(u.suffix)])
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || (mult > 1 && n > (1<<62)/mult) {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (KiB, MiB, GiB, TiB)", s)
	}
	return n * mult, nil
}

// Duration is a time.Duration written as "5s", "200ms" in TOML.
type Duration time.Duration

// UnmarshalTOML implements toml.Unmarshaler.
func (d *Duration) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("duration %v: want a string like \"5s\"", v)
	}
	x, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(x)
	return nil
}
