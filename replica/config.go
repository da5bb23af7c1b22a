package replica

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/repd/repd/api"
	"github.com/repd/repd/bitmap"
	"github.com/repd/repd/config"
	"github.com/repd/repd/protocol"
)

// PeerConfig names a node of the resource. Addr is its replication address
// (host:port): where it listens, for Config.Self; where it is dialed, for
// a peer.
type PeerConfig struct {
	ID   uint8
	Name string
	Addr string
	// Witness: the node stores no data; it only votes (quorum.go).
	Witness bool
	// Priority ranks the node as a successor in an automatic failover.
	Priority int
}

// Config configures a Node. FromFile builds it from a resource file; the
// policies are the typed values the config package parsed, taken as they
// are.
type Config struct {
	Resource    string
	Size        int64
	Protocol    api.Protocol // default C
	Granularity int64        // bitmap block, default 4096
	// ALExtents is the activity log's size in extents (default 1237). It is
	// fixed when the meta file is created.
	ALExtents int
	Self      PeerConfig
	Peers     []PeerConfig // the other nodes, at most 63
	MetaPath  string       // this node's meta file
	// Secret is the shared secret the peers prove to each other in the
	// handshake (keyed BLAKE3; protocol.Dial, Accept), and, without TLS,
	// the key of every frame's MAC. The handshake always runs; an empty
	// secret is an empty key (fine for tests, not for production).
	Secret           []byte
	Timeout          time.Duration // peer ack timeout, default 5s
	ConnectInterval  time.Duration // reconnect backoff base, default 200ms (max 5s)
	JournalBytes     int64         // default 64 MiB
	OnCongestion     config.Congestion
	Compression      protocol.Codec
	CompressionLevel int
	// DedupIndexBytes bounds the memory of each peer's dedup index (about
	// 128 bytes per 4 KiB block remembered); 0 disables deduplication
	// (zero blocks included).
	DedupIndexBytes int64
	// TLS, if not nil, runs every peer connection over TLS 1.3 with it
	// (protocol.NewTLSConfig: mutual certificates); the secret's handshake
	// still runs inside.
	TLS     *tls.Config
	Logger  *slog.Logger    // nil: discard
	OnEvent func(api.Event) // every state change; called without locks held, in order
	// CSums: checksum-based resync (the target sends block hashes, the
	// source sends only the blocks that differ). Used when both sides set it.
	CSums bool
	// ResyncRate caps resync and verify traffic in bytes/s (0: unlimited).
	ResyncRate int64
	// ResyncMinRate is what resync slows down to while application writes
	// are active (DRBD's c-min-rate); 0: resync does not yield.
	ResyncMinRate int64
	// AfterSB0Pri is the automatic split-brain policy when neither side is
	// Primary.
	AfterSB0Pri config.SplitBrainPolicy
	// OnIOError is the local disk failure policy (diskfail.go).
	OnIOError config.IOErrorPolicy
	// Quorum is the number of votes a node needs, itself included, among
	// the resource's voters (Self and Peers, witnesses too); 0: quorum is
	// off. Must be more than half the voters (quorum.go).
	Quorum int
	// OnNoQuorum: what a Primary without quorum does with writes.
	OnNoQuorum config.NoQuorumPolicy
	// AutoPromote: elect a successor when the Primary is lost (needs
	// Quorum); AutoFailback: step down for an in-sync node of higher
	// priority (election.go).
	AutoPromote, AutoFailback bool
	// WrapMeta, if set, decorates the meta file once it is opened: fault
	// injection for tests. Nil in production.
	WrapMeta func(bitmap.File) bitmap.File
	// bootID, if set, replaces bootid.ID: tests simulate a restart of the
	// system (a power loss) by changing it.
	bootID func() [16]byte
	// SnapshotStoreBytes is how much preserved data this node's snapshot
	// store may hold (snapshot.go); 0: snapshots are off. SnapshotStore is
	// the store file (default MetaPath + ".snap"); with snapshots off it
	// must not hold a store, whose snapshots would silently go stale.
	SnapshotStoreBytes int64
	SnapshotStore      string
	// SnapshotReadMinRate is what reads of snapshot exports slow down to
	// (bytes/s) while this node writes, application or replicated writes
	// (snapshot.go); 0: they do not yield.
	SnapshotReadMinRate int64
}

// maxPeers is the most peers a node has (bits of a uint64 mask, less one
// for safety in shifts).
const maxPeers = 63

// FromFile builds the configuration of node name from a parsed resource
// file: its own and its peers' addresses, the secret and the TLS
// certificates it names. Logger and OnEvent are left to the caller.
func FromFile(f *config.File, name string) (Config, error) {
	self, err := f.Node(name)
	if err != nil {
		return Config{}, err
	}
	secret, err := f.Secret()
	if err != nil {
		return Config{}, err
	}
	r := f.Resource
	c := Config{
		Resource:         r.Name,
		Size:             int64(r.Size),
		Protocol:         r.Protocol,
		Granularity:      int64(r.BlockSize),
		ALExtents:        r.ALExtents,
		Self:             PeerConfig{ID: uint8(*self.ID), Name: self.Name, Addr: cmp.Or(self.PeerListen, self.Peer), Witness: self.Witness(), Priority: self.Priority},
		MetaPath:         self.Meta,
		Secret:           secret,
		Timeout:          time.Duration(r.Timeout),
		ConnectInterval:  time.Duration(r.ConnectInterval),
		JournalBytes:     int64(r.JournalSize),
		OnCongestion:     r.OnCongestion,
		Compression:      r.Compression,
		CompressionLevel: r.CompressionLevel,
		DedupIndexBytes:  f.DedupIndexBytes(),
		CSums:            r.CSums,
		ResyncRate:       int64(r.ResyncRate),
		ResyncMinRate:    int64(r.ResyncMinRate),
		AfterSB0Pri:      r.AfterSB0Pri,
		OnIOError:        r.OnIOError,
		Quorum:           r.Quorum.Votes(len(f.Nodes)),
		OnNoQuorum:       r.OnNoQuorum,
		AutoPromote:      r.AutoPromote,
		AutoFailback:     r.AutoFailback,

		SnapshotStoreBytes:  int64(r.SnapshotStoreSize),
		SnapshotStore:       self.SnapshotStorePath(),
		SnapshotReadMinRate: f.SnapshotReadMinRateBytes(),
	}
	for i := range f.Nodes {
		n := &f.Nodes[i]
		if n.Name != self.Name {
			c.Peers = append(c.Peers, PeerConfig{ID: uint8(*n.ID), Name: n.Name, Addr: n.Peer, Witness: n.Witness(), Priority: n.Priority})
		}
	}
	if cert, key, ca, ok := f.TLSFiles(); ok {
		if c.TLS, err = protocol.LoadTLSConfig(cert, key, ca); err != nil {
			return Config{}, err
		}
	}
	return c, nil
}

// withDefaults fills the fields left zero and checks what no type can: the
// peers' ids and count, and the rates' signs.
func (c Config) withDefaults() (Config, error) {
	if c.Protocol == 0 {
		c.Protocol = api.ProtocolC
	}
	if c.Protocol != api.ProtocolA && c.Protocol != api.ProtocolC {
		return c, fmt.Errorf("protocol %q: use A or C", c.Protocol)
	}
	if c.Granularity == 0 {
		c.Granularity = bitmap.DefaultGranule
	}
	if c.ALExtents == 0 {
		c.ALExtents = config.DefaultALExtents
	}
	if c.Timeout <= 0 {
		c.Timeout = config.DefaultTimeout
	}
	if c.ConnectInterval <= 0 {
		c.ConnectInterval = config.DefaultConnect
	}
	if c.JournalBytes <= 0 {
		c.JournalBytes = config.DefaultJournalSize
	}
	if c.SnapshotReadMinRate < 0 {
		return c, fmt.Errorf("snapshot-read-min-rate %d must not be negative", c.SnapshotReadMinRate)
	}
	if c.ResyncRate < 0 || c.ResyncMinRate < 0 {
		return c, fmt.Errorf("resync rates must not be negative (resync-rate %d, resync-min-rate %d)", c.ResyncRate, c.ResyncMinRate)
	}
	if len(c.Peers) > maxPeers {
		return c, fmt.Errorf("%d peers: at most %d", len(c.Peers), maxPeers)
	}
	seen := map[uint8]bool{c.Self.ID: true}
	for _, pc := range c.Peers {
		if seen[pc.ID] {
			return c, fmt.Errorf("node id %d of peer %s is used twice", pc.ID, pc.Name)
		}
		seen[pc.ID] = true
	}
	voters := len(c.Peers) + 1
	if c.Quorum < 0 || c.Quorum > voters || c.Quorum > 0 && 2*c.Quorum <= voters {
		return c, fmt.Errorf("quorum %d: with %d voters it must be more than half of them, at most all (0: off)", c.Quorum, voters)
	}
	if c.AutoPromote && c.Quorum == 0 {
		return c, errors.New("auto-promote needs quorum")
	}
	if c.SnapshotStoreBytes < 0 {
		return c, fmt.Errorf("snapshot store size %d must not be negative (0: snapshots off)", c.SnapshotStoreBytes)
	}
	if c.SnapshotStore == "" && !c.Self.Witness && c.MetaPath != "" {
		c.SnapshotStore = c.MetaPath + ".snap"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c, nil
}

// dataPeers counts the peers that hold data (not witnesses).
func (c Config) dataPeers() int {
	k := 0
	for _, p := range c.Peers {
		if !p.Witness {
			k++
		}
	}
	return k
}

// identity is what the meta file of this node belongs to and its layout:
// the one place it is built (Open, CreateMeta).
func (c Config) identity() bitmap.Identity {
	return bitmap.Identity{
		Resource: c.Resource, Size: c.Size, Granularity: c.Granularity,
		NodeID: c.Self.ID, MaxPeers: max(8, c.dataPeers()), ALExtents: c.ALExtents,
	}
}

// ErrMetaExists is returned by CreateMeta without force when the meta file
// exists.
var ErrMetaExists = bitmap.ErrExists

// CreateMeta initializes the meta file of cfg offline (repctl create-md):
// empty bitmaps, no generation, disk Inconsistent. With force an existing
// file is overwritten (its bitmaps and generation identifiers are lost);
// without, it is refused with ErrMetaExists. A meta file in use by a
// running node is locked and refused either way.
func CreateMeta(cfg Config, force bool) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	create := bitmap.Create
	if force {
		create = bitmap.CreateForce
	}
	m, err := create(cfg.MetaPath, cfg.identity())
	if err != nil {
		if errors.Is(err, bitmap.ErrExists) {
			return err
		}
		return fmt.Errorf("meta data %s: %w", cfg.MetaPath, err)
	}
	return m.Close()
}
