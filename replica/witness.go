package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/repd/repd/api"
	"github.com/repd/repd/protocol"
)

// A witness (a node with disk = "none") stores no data, votes, and is never
// Primary. Its links to the data nodes, and theirs to it, are vote-only
// sessions: State frames both ways, lease requests and answers, promotion
// requests and answers, pings; no bitmaps, journal, resync or verify. What
// it must not forget across a restart is the newest data generation a
// Primary announced to it (Lease frames carry it): it grants the Primary
// role only to a node that holds that generation. It keeps it in its state
// file (the node's meta path):
//
//	 0       4         8                16    17      18                    18+len
//	 +-------+---------+----------------+-----+-------+---------------------+----------+
//	 | "RPDW"| version | known gen (u64) | id  | len   | resource name (len) | xxhash64 |
//	 +-------+---------+----------------+-----+-------+---------------------+----------+
//
// Little endian; version 1; the checksum covers everything before it. It is
// replaced atomically (write a temporary file, fdatasync, rename, fsync the
// directory) before the acknowledgement that relies on it is sent. A lost
// state file makes the witness forget the generation: it then grants any
// UpToDate candidate (as a fresh one does), so keep it with the node.

const (
	witnessMagic   = "RPDW"
	witnessVersion = 1
)

// loadWitnessState reads the state file, or creates it (known 0) when
// absent. A damaged file is an error: the witness must not vote on a guess.
func (n *Node) loadWitnessState() error {
	b, err := os.ReadFile(n.cfg.MetaPath)
	if errors.Is(err, os.ErrNotExist) {
		return n.saveWitnessState(0)
	}
	if err != nil {
		return fmt.Errorf("witness state %s: %w", n.cfg.MetaPath, err)
	}
	known, id, res, err := decodeWitnessState(b)
	if err != nil {
		return fmt.Errorf("witness state %s: %w; if the file is lost, remove it (the witness then trusts any UpToDate candidate once)", n.cfg.MetaPath, err)
	}
	if res != n.cfg.Resource || id != n.cfg.Self.ID {
		return fmt.Errorf("witness state %s is for node id %d of resource %q, not node id %d of %q", n.cfg.MetaPath, id, res, n.cfg.Self.ID, n.cfg.Resource)
	}
	n.quorum.known = known
	return nil
}

func decodeWitnessState(b []byte) (known uint64, id uint8, resource string, err error) {
	if len(b) < 18+8 || string(b[:4]) != witnessMagic {
		return 0, 0, "", errors.New("not a witness state file")
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != witnessVersion {
		return 0, 0, "", fmt.Errorf("version %d, this repd reads %d", v, witnessVersion)
	}
	l := int(binary.LittleEndian.Uint16(b[17:]))
	if len(b) != 19+l+8 {
		return 0, 0, "", errors.New("truncated or too long")
	}
	if xxhash.Sum64(b[:19+l]) != binary.LittleEndian.Uint64(b[19+l:]) {
		return 0, 0, "", errors.New("checksum mismatch")
	}
	return binary.LittleEndian.Uint64(b[8:]), b[16], string(b[19 : 19+l]), nil
}

func encodeWitnessState(known uint64, id uint8, resource string) []byte {
	b := []byte(witnessMagic)
	b = binary.LittleEndian.AppendUint32(b, witnessVersion)
	b = binary.LittleEndian.AppendUint64(b, known)
	b = append(b, id)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(resource)))
	b = append(b, resource...)
	return binary.LittleEndian.AppendUint64(b, xxhash.Sum64(b))
}

// saveWitnessState makes known durable.
func (n *Node) saveWitnessState(known uint64) error {
	path := n.cfg.MetaPath
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("witness state: %w", err)
	}
	_, err = f.Write(encodeWitnessState(known, n.cfg.Self.ID, n.cfg.Resource))
	if err == nil {
		err = f.Sync()
	}
	if e := f.Close(); err == nil {
		err = e
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		var d *os.File
		if d, err = os.Open(filepath.Dir(path)); err == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("witness state %s: %w", path, err)
	}
	n.quorum.known = known
	return nil
}

// learnGenerationLocked records the supported Primary's generation on a
// witness before it is acknowledged. n.mu held.
func (n *Node) learnGenerationLocked(gen uint64) error {
	if gen == n.quorum.known {
		return nil
	}
	if err := n.saveWitnessState(gen); err != nil {
		return err
	}
	n.log.Info("witness: the Primary's data generation", "current", api.FormatUUID(gen))
	return nil
}

// negotiateVote is negotiate for a vote-only session (either side is a
// witness): the States are exchanged, nothing else.
func (p *peer) negotiateVote(s *session) error {
	n, c := p.n, s.c
	c.SetDeadline(time.Now().Add(n.cfg.Timeout))
	n.mu.Lock()
	mine := p.stateLocked(0)
	n.mu.Unlock()
	theirs, err := p.exchangeStates(c, mine)
	if err != nil {
		return err
	}
	c.SetDeadline(time.Time{})
	n.mu.Lock()
	defer n.unlock()
	p.sess = s
	p.lastErr = ""
	p.connects++
	p.noteStateLocked(&theirs)
	p.setConnLocked(api.Connected, "vote only")
	p.setReplLocked(api.Established)
	p.sendStateLocked(0)
	n.recomputeLeaseLocked()
	n.log.Info("peer connected", "peer", p.cfg.Name, "vote_only", true, "peer_role", p.peerRole, "peer_disk", p.peerDisk)
	return nil
}

// isWitnessData reports frames a vote-only session must never carry.
func isWitnessData(t protocol.Type) bool {
	switch t {
	case protocol.TypeWrite, protocol.TypeAck, protocol.TypeBarrier, protocol.TypeBarrierAck, protocol.TypeBitmap,
		protocol.TypeResyncDone, protocol.TypeDataReq, protocol.TypeCsums, protocol.TypeCsumsDone,
		protocol.TypeVerify, protocol.TypeVerifyReply, protocol.TypePeerSeqs,
		protocol.TypeSnapshot, protocol.TypeSnapshotAck, protocol.TypeSnapshotReq, protocol.TypeSnapshotReply:
		return true
	}
	return false
}

var errWitness = errors.New("a witness stores no data")

// witnessRefusal is the error of I/O and data verbs on a witness.
func (n *Node) witnessRefusal(op string) error {
	return fmt.Errorf("%s on %s: %w (%w): it only votes; use a data node", op, n.cfg.Self.Name, ErrRefused, errWitness)
}
