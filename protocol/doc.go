// Package protocol is the wire format between repd peers: checksummed or
// authenticated, versioned frames; payload codecs (raw, s2, zstd); the
// handshake, in which each side proves the shared secret over everything
// both said; and the messages of replication (state, write, ack, barrier,
// ping, bitmap, resync, verify, promotion).
//
// # Frame layout
//
// Every value is little endian. A frame is a 24-byte header, a payload of
// PayloadLen bytes encoded by Codec, and a trailer of 8 or 16 bytes:
//
//		 0       4    5    6    7    8            12           16                      24
//		 +-------+----+----+----+----+------------+------------+-----------------------+
//		 | magic |ver |type|flag|codc| payload len| raw len    | seq                   |
//		 +-------+----+----+----+----+------------+------------+-----------------------+
//		 | payload (payload len bytes; raw len bytes once decoded by the codec)        |
//		 +-----------------------------------------------------------------------------+
//		 | trailer: xxhash64(header ‖ payload), 8 bytes                                |
//		 |   or, on an authenticated link (below), the 16-byte AES-256-GCM tag of      |
//		 |   header ‖ payload as additional data, no plaintext, under the direction's  |
//		 |   frame key with the direction's frame counter as the nonce                 |
//		 +-----------------------------------------------------------------------------+
//
//	  - magic is Magic ("RPD\x01" read as bytes 'R','P','D',0x01).
//	  - ver is Version (2). Before the handshake completed a reader refuses
//	    frames of another version with a *VersionError, except a Refuse
//	    frame, whose layout never changes, so a peer of any version can read
//	    why it was turned away.
//	  - type is a Type; flag holds Flags whose meaning depends on the type;
//	    codc is a Codec.
//	  - raw len is the payload length after decoding; it equals payload len for
//	    CodecNone. Both are at most the type's limit (types.go), itself at
//	    most MaxPayload.
//	  - seq is the frame's 64-bit number: the write's sequence number, the
//	    cumulative ack, the barrier number, the ping token.
//
// The trailer covers the header and the encoded payload. A frame with a
// bad magic, version, type, codec, length or trailer is an error wrapping
// ErrCorrupt (or a *VersionError); the caller closes the connection. A
// reader never returns a frame that failed a check, so nothing corrupt is
// ever applied, and nothing unauthenticated is ever decompressed.
//
// # Frame types and what they may carry
//
// typeTable (types.go) lists every type with its name, when it may travel
// and the most payload it may carry; the Reader enforces it before it
// reads a payload, the Writer before it sends one. Before the handshake
// completed (a new Conn) only Hello, Auth and Refuse pass, uncompressed,
// each at most MaxPreAuthPayload (1 KiB) — a Hello is at most
// MaxHelloSize (185) bytes — and the Reader and Writer hold about 2 KiB of
// buffers each: an unauthenticated connection costs a few KiB, whatever it
// announces. The 256 KiB buffers come with the handshake's success; from
// then on Hello and Auth are refused and every other type passes, up to
// its limit.
//
// # Payloads
//
// Message payloads are fixed fields followed by variable ones; strings are a
// uint16 length then UTF-8 bytes. See the Append and Decode methods of each
// message type for the exact layouts: Hello, Auth, State, Write, Bitmap,
// ResyncDone, Hashes (Csums, Verify), Mismatches (VerifyReply). Ack,
// Barrier, BarrierAck, Ping, Pong, CsumsDone, PromoteReq and PromoteEnd
// carry only seq. Refuse carries a UTF-8 sentence (ReasonText cleans it
// for a log line). A Write with FlagDedup carries a DedupWrite (zero and
// reference blocks, dedup.go); DataReq (seq only) asks for the full data
// of such a write, which comes back as a Write with FlagResend.
// PromoteReq, PromoteReply (a UTF-8 refusal, empty when granted) and
// PromoteEnd make a promotion a two-phase cluster-wide change; PeerSeqs
// tells a Secondary which writes the other nodes hold (cluster.go).
// StateOutdated in a State tells the receiver its data lacks writes.
// Snapshot (a name), SnapshotAck and SnapshotReply (a UTF-8 reason, empty
// on success) and SnapshotReq take point-in-time snapshots at a place in
// the write stream (snapshot.go).
//
// Decoders bound what a payload can make the receiver do: Hello names
// are 1 to 64 letters, digits, '-', '_' or '.' (ValidName); a Hashes or
// Mismatches covers one batch (1 to MaxData bytes, at most MaxSums
// sums or ranges); no range's end may overflow 64 bits; extents are
// non-empty.
//
// # Compression
//
// After the handshake, a frame's payload is compressed with the
// connection's codec unless it is short, its sampled bytes look random,
// or the result does not shrink by at least 1/32: then it goes raw
// (CodecNone).
//
// Application data larger than MaxData is split by the sender into several
// Write frames; MaxPayload bounds every frame so a reader's memory is
// bounded.
//
// # Handshake
//
// The dialer D (the node that opened the TCP connection) and the listener
// L take turns; every step is one frame:
//
//	D → L  Hello_D   features, size, granularity, node id, nonce N_D (32
//	                 random bytes), resource, name
//	L      checks Hello_D: version, names, resource, size, granularity,
//	       frame authentication (FeatureFrameMAC), the caller's check
//	L → D  Hello_L   the same fields of L, with its nonce N_L
//	D      checks Hello_L the same way, and that L's node id is the one
//	       it meant to reach (Dial's want)
//	D → L  Auth_D = BLAKE3-keyed(K, "proof of the dialer" ‖ T2 ‖ id_D ‖ id_L)
//	L      verifies Auth_D (constant time); a wrong one is refused here,
//	       and L has proved nothing
//	L → D  Auth_L = BLAKE3-keyed(K, "proof of the listener" ‖ T3 ‖ id_D ‖ id_L)
//	D      verifies Auth_L
//
// where K = BLAKE3-derive-key("... authentication key ...", secret), and
// T2, T3 are the BLAKE3 hashes of the transcript: the exact bytes (header
// ‖ payload) of Hello_D and Hello_L, then of Auth_D too. A check that
// fails is answered with a Refuse frame naming the field, then the
// connection is closed. A peer of another version gets "protocol version
// N is not supported"; a handshake frame out of turn gets a Refuse and
// ErrUnexpected; anything else (another type, a compressed or oversized
// frame, garbage) is ErrCorrupt and the connection is just closed.
//
// Why relaying and reflecting proofs fail. A proof is a MAC under K over
// everything both sides said, in order, and over who said it in which
// role. An attacker without the secret can only hand on proofs that
// honest nodes made, so it must find an honest node that proves a
// transcript some other honest node accepts:
//
//   - A listener proves nothing before it verified the dialer's proof over
//     the same transcript. So a listener can never be used as an oracle:
//     to get Auth_L, the attacker needs Auth_D first.
//   - A dialer proves only a transcript that starts with its own Hello,
//     with a nonce it just drew, followed by exactly the Hello it received,
//     and only after checking that Hello names the node it dialed. A
//     listener L accepts Auth_D only over its own Hello with its own fresh
//     N_L. So an accepted Auth_D means that D saw L's Hello unchanged and L
//     saw D's Hello unchanged: the attacker merely passed the bytes between
//     D and L, who wanted to talk to each other. Forwarding D's proof to a
//     third node M fails (M's Hello and nonce are not in it); claiming to
//     be D towards L while D dials M fails (D's transcript holds M's Hello,
//     or D refuses it as not the node it dialed).
//   - Reflection fails: the dialer's and the listener's proofs use
//     different domain strings, and a node's Hello is always first in the
//     transcripts it proves as dialer and second in those it proves as
//     listener, so no proof of a node serves as a proof towards that node
//     or in the other role.
//   - Swapping or altering a Hello (its nonce, id, names, features — e.g.
//     clearing FeatureFrameMAC to downgrade the link) changes the
//     transcript on one side only: the proofs do not verify.
//   - Replaying an old handshake fails: the replayed proof is over an old
//     nonce of the verifier, and each side draws a fresh one per
//     connection.
//
// What the proofs do not show: every node of a resource holds the same
// secret, so a proof shows that the peer knows it, not which node it is. A
// node that has the secret is trusted to claim only its own id (with TLS,
// certificates name the nodes). Without a secret (no secret-file) the
// same exchange runs with K derived from the empty secret: it proves
// nothing, as there is nothing to prove.
//
// # Authenticated frames
//
// When both sides have a secret and the link is not TLS (FeatureFrameMAC
// in both Hellos; a difference is refused, and so is feature bit 4, with
// which pre-release builds of version 2 announced keyed-BLAKE3 frame
// MACs), every frame after the handshake ends in a 16-byte MAC instead of
// the xxhash64 trailer: the tag of AES-256-GCM (NIST SP 800-38D) used as
// a MAC, i.e. GMAC — no plaintext, the frame's bytes as the additional
// data:
//
//	key_D→L = BLAKE3-derive-key("... AES-256-GCM frame key, dialer to listener", K ‖ T4)
//	key_L→D = BLAKE3-derive-key("... AES-256-GCM frame key, listener to dialer", K ‖ T4)
//	MAC     = AES-256-GCM-Seal(key, nonce, plaintext = "", additional data = header ‖ payload)
//
//	nonce (12 bytes):  0                       8           12
//	                   +-----------------------+-----------+
//	                   | counter u64           | 0 0 0 0   |
//	                   +-----------------------+-----------+
//
// where T4 is the hash of all four handshake frames (Session.Transcript),
// header ‖ payload are the bytes of the frame as sent (the payload
// encoded, before any decompression), and counter is the number of frames
// sent in that direction since the handshake (0 for the first). The
// counter is not sent.
//
// Why this detects what it must. GCM's tag is GHASH_H(header ‖ payload,
// lengths) ⊕ AES_key(nonce ‖ 1): a polynomial hash of the bytes under a
// secret point H = AES_key(0), masked by a pseudo-random pad that is
// fresh for each nonce. GCM is secure as long as a key never sees a nonce
// twice; here a key serves one direction of one connection (T4 holds both
// sides' fresh handshake nonces, and the directions have keys of their
// own), and the nonce is that direction's counter, which only grows. So:
//
//   - a frame altered in any byte (header, payload, or the tag itself)
//     fails: a forgery succeeds with probability at most about
//     (ℓ+1)/2^127 for a frame of ℓ 16-byte blocks (2^-111 for 1 MiB);
//   - a frame injected, replayed (from this connection or an earlier one),
//     reordered, spliced in from another connection or reflected from the
//     other direction, or any frame after a dropped one, is checked under a
//     counter (or key) its tag was not made for, whose pad the attacker
//     has never seen: it fails like a forgery;
//
// with an error wrapping ErrCorrupt and ErrFrameAuth, and the Reader
// stays failed: an attacker gets one guess per connection, and the next
// connection has new keys. (Frames cut off at the end of a connection are
// not detected here; the replication protocol's acks account for them.)
//
// Split tags for large frames. GCM takes the bytes it authenticates as one
// slice, so a frame must lie in one piece of memory to get the tag above:
// a writer whose frame is a 16-byte head here and 1 MiB of data there
// (a Write whose data is the application's buffer) copied it whole, which
// took a tenth of a protocol-C Primary's CPU at 1 MiB writes. Between two
// peers that both announce FeatureSplitMAC, a frame whose payload has
// P ≥ 64 KiB bytes is tagged in two parts instead, with s = P mod 512 (a
// Write's head, as NBD data comes in multiples of 512 bytes):
//
//	inner = AES-256-GCM-Seal(key, nonce(counter, 2), "", payload[s:])
//	MAC   = AES-256-GCM-Seal(key, nonce(counter, 1), "", header ‖ payload[:s] ‖ inner)
//
//	nonce(counter, part):  0                       8           12
//	                       +-----------------------+-----------+
//	                       | counter u64           | part u32  |
//	                       +-----------------------+-----------+
//
// Frames below 64 KiB, and every frame when either side lacks the
// feature, keep the tag above (part 0). The inner tag is never sent. Each
// (counter, part) nonce still serves one computation under a key: a
// counter value belongs to one frame, whose size (in its authenticated
// header) decides whether it uses part 0 or parts 1 and 2. Altering the
// header or payload[:s] (which includes moving the split point, since
// P is in the header) changes the outer tag's input; altering
// payload[s:] changes the inner tag unless GHASH collides on it, with
// probability about ℓ/2^128, and then the outer input. Either way a forgery
// is a GCM forgery under a fresh pad, as above. The receiver computes the
// same two tags over the frame it read.
//
// Key usage limits. AES's pads are a permutation's outputs, not a random
// function's; after q frames under one key this shows with probability
// about q²/2^129. So a key authenticates at most 2^32 frames (2^-65): frame
// 2^32·e+i, 0 ≤ i < 2^32, is authenticated under key number e, where key
// 0 is the one above and key e+1 = BLAKE3-derive-key("... AES-256-GCM
// frame key, next 2^32 frames", key e). Both ends rekey at the same frame
// by counting; nothing is sent, and the nonce stays the full counter. The
// counter never wraps: the Writer refuses frame 2^64-1, and the Reader a
// peer's (58 000 years at 10 million frames a second).
//
// Why AES-GCM. It is a standard, widely reviewed construction (that of
// TLS 1.3's mandatory cipher suite, there with 128-bit keys), in Go's
// standard library (crypto/cipher; Go's FIPS 140-3 module), and it runs
// on the AES and carry-less multiply
// instructions of amd64 and arm64 servers. On the bench machine (AMD EPYC)
// a 4 KiB frame's tag costs about 0.7 µs of CPU, against about 3.5 µs for
// keyed BLAKE3 (github.com/zeebo/blake3, the MAC before it) and for
// HMAC-SHA-256 with the SHA instructions; a 4 KiB frame's write and read
// in BenchmarkFrame went from 7.4–8.7 µs to 1.6–1.8 µs of CPU, next to
// 0.8–1.0 µs with xxhash64, and in the bench's protocol-A 4 KiB QD32 job
// the GCM code is about 1 % of the repd processes' CPU (xxhash64 0.8 %
// without a secret). (ChaCha20-Poly1305 would add a dependency,
// golang.org/x/crypto, for a construction meant for CPUs that lack AES
// instructions.) A CPU without
// AES/CLMUL instructions gets Go's generic code, correct but several
// times slower. Go in FIPS 140-only mode (GODEBUG=fips140=only) refuses
// GCM with caller-chosen nonces, so there the handshake fails at the
// frame keys: use TLS instead of a secret alone. The MAC authenticates;
// it does not encrypt: data crosses the link in clear unless TLS is on.
//
// The tags are computed by internal/gmac: on CPUs with AVX-512 and the
// vector carry-less multiply (VPCLMULQDQ) its own code hashes 32 blocks
// per round in 512-bit registers, 25 GB/s against crypto/cipher's 8.1 on
// the bench machine for 1 MiB (BenchmarkTag there), and the tag is the
// same; elsewhere it calls crypto/cipher. Its tests compare every tag
// with crypto/cipher's (every length up to 1,576 bytes, large frames,
// unaligned inputs, FuzzTag), and mac_test.go compares the tags on the
// wire.
//
// On a TLS link TLS authenticates every byte and frames keep xxhash64,
// as they do without a secret.
//
// With TLS configured (tls.go) the connection is a TLS 1.3 session with
// certificates on both sides, and all of the above runs inside it.
package protocol
