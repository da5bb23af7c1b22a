// Package protocol is the wire format between repd peers: checksummed,
// versioned frames; payload codecs (raw, s2, zstd); the handshake with
// mutual HMAC authentication; and the messages of replication (state, write,
// ack, barrier, ping, bitmap, resync).
//
// # Frame layout
//
// Every value is little endian. A frame is a 24-byte header, a payload of
// PayloadLen bytes encoded by Codec, and an 8-byte trailer:
//
//		 0       4    5    6    7    8            12           16                      24
//		 +-------+----+----+----+----+------------+------------+-----------------------+
//		 | magic |ver |type|flag|codc| payload len| raw len    | seq                   |
//		 +-------+----+----+----+----+------------+------------+-----------------------+
//		 | payload (payload len bytes; raw len bytes once decoded by the codec)        |
//		 +-----------------------------------------------------------------------------+
//		 | xxhash64(header ‖ payload), 8 bytes                                         |
//		 +-----------------------------------------------------------------------------+
//
//	  - magic is Magic ("RPD\x01" read as bytes 'R','P','D',0x01).
//	  - ver is Version. A reader refuses frames of another version with a
//	    *VersionError, except a Refuse frame, whose layout never changes, so a
//	    peer of any version can read why it was turned away.
//	  - type is a Type; flag holds Flags whose meaning depends on the type;
//	    codc is a Codec.
//	  - raw len is the payload length after decoding; it equals payload len for
//	    CodecNone. Both are at most MaxPayload.
//	  - seq is the frame's 64-bit number: the write's sequence number, the
//	    cumulative ack, the barrier number, the ping token.
//
// The checksum covers the header and the encoded payload. A frame with a bad
// magic, version, type, codec, length or checksum is an error wrapping
// ErrCorrupt (or a *VersionError); the caller closes the connection. A
// reader never returns a frame that failed a check, so nothing corrupt is
// ever applied.
//
// # Payloads
//
// Message payloads are fixed fields followed by variable ones; strings are a
// uint16 length then UTF-8 bytes. See the Append and Decode methods of each
// message type for the exact layouts: Hello, Auth, State, Write, Bitmap,
// ResyncDone. Ack, Barrier, BarrierAck, Ping and Pong carry only seq. Refuse
// carries a UTF-8 sentence. A Write with FlagDedup carries a DedupWrite
// (zero and reference blocks, dedup.go); DataReq (seq only) asks for the
// full data of such a write, which comes back as a Write with FlagResend.
// PromoteReq, PromoteReply (a UTF-8 refusal, empty when granted) and
// PromoteEnd make a promotion a two-phase cluster-wide change; PeerSeqs
// tells a Secondary which writes the other nodes hold (cluster.go).
// StateOutdated in a State tells the receiver its data lacks writes.
//
// # Compression
//
// A frame's payload is compressed with the connection's codec unless it is
// short, its sampled bytes look random, or the result does not shrink by
// at least 1/32: then it goes raw (CodecNone).
//
// Application data larger than MaxData is split by the sender into several
// Write frames; MaxPayload bounds every frame so a reader's memory is
// bounded.
//
// # Handshake
//
// Both sides send Hello at once (version in the header, feature bits,
// resource, size, granularity, node id and name, a 32-byte random nonce) and
// check the other's: a different version, resource, size or granularity is
// answered with a Refuse frame naming the field, then the connection is
// closed. Then both send Auth: HMAC-SHA256 over the other side's nonce, the
// own nonce and the own node id with the shared secret, and check the
// other's with a constant-time compare. Only then is any state exchanged
// (State, then the Bitmap frames, by the replica package).
//
// With TLS configured (tls.go) the connection is a TLS 1.3 session with
// certificates on both sides, and all of the above runs inside it.
package protocol
