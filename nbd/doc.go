// Package nbd implements an NBD server (fixed newstyle handshake, pipelined
// transmission with simple or structured replies, metadata contexts and
// block status) to the protocol in NetworkBlockDevice/nbd doc/proto.md,
// and QEMU's qemu:dirty-bitmap:NAME contexts (QEMU docs/interop/nbd.txt).
//
// It serves any Device. Optional abilities are found by type assertion:
// Trimmer (TRIM), Zeroer (WRITE_ZEROES), Quick (run small requests on the
// reader), Allocator (holes and zeroes: base:allocation, and holes in
// reads) and MetaContexts (further contexts, such as the blocks changed
// since a snapshot). The package knows nothing of replication.
//
// # Exports and snapshots
//
// An Export is a name, a Device and ReadOnly. A point-in-time snapshot is
// an export of its own, by convention RESOURCE@NAME, read-only, whose
// Device is an Allocator (what the snapshot holds) and MetaContexts
// offering qemu:dirty-bitmap:OTHER for the blocks changed between
// snapshot OTHER and it; the live device may offer the same for the
// blocks changed since each snapshot. Tools written for QEMU's
// incremental backup (nbdinfo --map=qemu:dirty-bitmap:NAME, qemu-img map
// with x-dirty-bitmap, libnbd's block status) read them unchanged.
// Server.ExportsFunc lets exports come and go; a connection keeps the
// Export it entered, and CloseExport ends the connections on one (a
// snapshot being deleted) and guarantees its Device is not called after.
//
// # Wire formats
//
// All integers are big-endian. Handshake (S: server, C: client):
//
//	S: "NBDMAGIC" (8) | "IHAVEOPT" (8) | handshake flags (2): FIXED_NEWSTYLE|NO_ZEROES
//	C: client flags (4): C_FIXED_NEWSTYLE, C_NO_ZEROES; any other bit closes
//	then options until one enters transmission:
//	C: "IHAVEOPT" (8) | option (4) | length (4) | data (length ≤ 64 KiB)
//	S: 0x3e889045565a9 (8) | option (4) | reply type (4) | length (4) | data
//
// NBD_OPT_EXPORT_NAME (data: name) has no option reply: the server sends
// size (8) | transmission flags (2) | 124 zero bytes (unless NO_ZEROES), or
// closes for an unknown export. NBD_OPT_INFO and NBD_OPT_GO take
// name length (4) | name | n (2) | n info types (2 each) and answer
// NBD_REP_INFO replies (EXPORT: size (8), flags (2); NAME; DESCRIPTION;
// BLOCK_SIZE: min (4), preferred (4), max (4)) then NBD_REP_ACK; after
// GO's ACK the transmission phase starts. NBD_OPT_LIST answers one
// NBD_REP_SERVER (name length (4) | name | description) per export, then ACK.
// NBD_OPT_ABORT is acknowledged and the connection closed.
// NBD_OPT_STARTTLS (no data) is answered NBD_REP_ACK, after which the TLS
// handshake runs and option haggling goes on inside TLS (see TLS below).
// NBD_OPT_STRUCTURED_REPLY (no data) is acknowledged; replies are then
// structured (below). NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT take
//
//	export name length (4) | name | n queries (4) | n × (query length (4) | query)
//
// and answer one NBD_REP_META_CONTEXT (context id (4) | name) per context,
// then ACK. The contexts of an export are base:allocation and its
// Device's MetaContexts. LIST with no query lists them all; a query
// ending in a colon (base:, qemu:, qemu:dirty-bitmap:) lists the names it
// starts; another query the name it equals; ids are 0. SET needs
// structured replies, selects the names its queries equal (wildcards
// select nothing), each once, with ids 1, 2, ...; it replaces the
// selection, also when it fails, and the selection holds only if the
// client then enters the export it named (as sent). As in qemu-nbd,
// queries that are not NAMESPACE:... match nothing. NBD_OPT_STARTTLS
// forgets structured replies and the selection. NBD_OPT_EXTENDED_HEADERS
// gets NBD_REP_ERR_UNSUP: 32-bit lengths suffice for requests up to 32
// MiB and status of up to MaxStatusLength, and no client this project
// tests with (libnbd 1.14, QEMU 7.2) sends it.
// Any other option gets NBD_REP_ERR_UNSUP, its data read and discarded.
//
// Transmission:
//
//	C: 0x25609513 (4) | command flags (2) | type (2) | cookie (8) | offset (8) | length (4) | data (WRITE only)
//	S: 0x67446698 (4) | error (4) | cookie (8) | data (READ with error 0 only)
//
// With structured replies, a READ and every error are answered in chunks:
//
//	S: 0x668e33ef (4) | flags (2): DONE on the last | type (2) | cookie (8) | length (4) | payload
//
//	OFFSET_DATA (1)   offset (8) | data
//	OFFSET_HOLE (2)   offset (8) | size (4)
//	BLOCK_STATUS (5)  context id (4) | n × (length (4) | flags (4))
//	ERROR (32769)     error (4) | message length (2) | message
//	NONE (0)          nothing (a READ of 0 bytes)
//
// A READ is read whole before its first chunk goes out, so no error can
// follow a final chunk: one OFFSET_DATA chunk, or, from an Allocator and
// for reads of 64 KiB or more without DF, OFFSET_HOLE chunks for runs of
// at least 4 KiB that read as zeroes (not read from the Device) between
// OFFSET_DATA chunks, at most 64 chunks. A refused or failed request gets
// an ERROR chunk whose message names the request and the reason; other
// successful requests keep their simple replies. NBD_CMD_BLOCK_STATUS
// (flags REQ_ONE, FUA) gets one BLOCK_STATUS chunk per selected context,
// describing [offset, offset+length) from offset (at most MaxStatusLength
// of it, at most MaxExtents extents, one with REQ_ONE; neighbours with
// equal flags joined); a context the Device fails to answer fails the
// request with an ERROR chunk naming it. base:allocation comes from the
// Allocator (StateHole, StateZero), or is all data without one.
//
// Requests are parsed by one reader per connection and run by a bounded pool
// of workers; replies go out in completion order through one buffered writer.
// When the reader has no further request buffered and the Device reports a
// small read or write Quick (it waits for nothing but the local disk), the
// reader runs it itself: the hand-off to a worker would cost more than the
// request, and the reader would otherwise only wait for the client. While it
// does so for a client that pipelines, the reader waits for the next
// request with a few non-blocking receives and then a blocking read(2)
// rather than the Go netpoller (cheaper per wake-up at small-request
// rates); otherwise (also after starting writes an AsyncWriter completes
// elsewhere, whose completions then run on the reader's thread), and while
// a large WRITE payload arrives in pieces, it waits in the netpoller.
// A refused request gets an error reply and the connection goes on (a
// refused WRITE's payload is read and discarded); only broken framing (bad
// request magic, a WRITE longer than MaxPayload, a truncated stream) closes
// a connection, after its in-flight requests have been answered.
//
// # TLS
//
// Server.TLSMode picks one of the spec's three modes. TLSOff (NOTLS):
// NBD_OPT_STARTTLS gets NBD_REP_ERR_POLICY. TLSAllow (SELECTIVETLS, no
// export TLS-only): a client may upgrade or stay plain. TLSRequire
// (FORCEDTLS): before TLS, every option but NBD_OPT_STARTTLS and
// NBD_OPT_ABORT gets NBD_REP_ERR_TLS_REQD with a message saying so, and
// NBD_OPT_EXPORT_NAME (which has no error reply) ends the session, as does
// anything from a client without NBD_FLAG_C_FIXED_NEWSTYLE (TLS needs fixed
// newstyle). NBD_OPT_STARTTLS with data, or once TLS runs, gets
// NBD_REP_ERR_INVALID. Bytes the client sent behind NBD_OPT_STARTTLS before
// its TLS handshake end the session (they would otherwise be read as if
// they came inside TLS: the STARTTLS injection attack). The handshake is
// crypto/tls's with Server.TLS (TLSConfig: TLS 1.3, and client
// certificates signed by a given CA for mutual TLS); crypto/tls has no
// TLS-PSK. A session that ends cleanly (NBD_CMD_DISC, NBD_OPT_ABORT) gets
// a close_notify alert before the socket closes; a failed one is only
// closed.
//
// # Bounds
//
// Everything a client sends is hostile until proven otherwise; what one
// can make the server hold is bounded, and each bound has a test that
// performs the attack:
//
//   - Connections: at most MaxConns served at once (default 64), of which
//     at most MaxHandshakes (default 16) still negotiating. A connection
//     beyond either is closed at once, before the greeting; refusals are
//     logged at most once a second with a count.
//   - Handshake: HandshakeTimeout (default 30s) bounds option haggling and
//     the TLS handshake together; an option's data is at most 64 KiB (a
//     longer one closes the connection); option replies are flushed one
//     option at a time under the same deadline. Failed negotiations are
//     logged at most once a second with a count.
//   - Metadata contexts: a LIST or SET option has at most 256 queries
//     (more: NBD_REP_ERR_TOO_BIG) of at most 4096 bytes each (longer:
//     NBD_REP_ERR_INVALID), each matched against the export's contexts; a
//     connection selects at most MaxMetaContexts (default 16; more:
//     NBD_REP_ERR_TOO_BIG).
//   - Block status: the Device is asked about at most MaxStatusLength
//     (default 1 GiB) per request and context, at most MaxExtents
//     (default 16384) extents go out per context, each Device answer is
//     encoded into the reply as it comes, and a status request holds in
//     the in-flight bytes, until its reply is written, the buffer of its
//     largest possible reply (contexts × (24 + 8 × MaxExtents) bytes,
//     rounded up to a power of two: 256 KiB for one context) and one
//     Device answer (16 bytes × MaxExtents), so pipelined status requests
//     a client does not read are bounded like reads.
//   - Requests in flight: at most MaxInFlight (default 64) requests and
//     MaxInFlightBytes (default 64 MiB) of payload per connection (a single
//     larger request is admitted alone), counted from the moment the
//     reader admits a request until its reply has been written to the
//     socket, not merely queued: a client that does not read its replies
//     stops the reader (backpressure), it cannot make the server queue.
//   - Reply backlog: at most MaxReplyBacklog (default 16 MiB) of reply
//     bytes queued for the socket per connection, including replies the
//     reader gives itself to refused requests (which hold no in-flight
//     budget); at the bound the reader takes no further request.
//   - Payload: READ and WRITE at most MaxPayload (default 32 MiB); a longer
//     WRITE closes the connection (its payload is not read), a refused
//     WRITE's payload is skipped without a buffer.
//   - Write deadline: replies go to the socket in pieces of at most 256
//     KiB, each of which the client must take within WriteTimeout
//     (default 30s; between 7/8 of it and all of it, since the deadline is
//     refreshed when an eighth has passed). A client that does not read is
//     disconnected that long after the socket's buffers filled, and its
//     requests' buffers freed; a slow client that reads at least 256 KiB
//     per WriteTimeout (about 10 KB/s at the default) is not cut.
//   - Retained buffers: a connection keeps its read and write buffers (128
//     KiB each) and two reply batches (the pending one and the spare) of
//     at most 1 MiB each between writes.
//
// Per connection the server thus holds at most about MaxInFlightBytes +
// MaxReplyBacklog + 2.3 MiB, and for the whole server MaxConns times that
// (with the defaults about 5 GiB: lower MaxConns, or MaxInFlightBytes, on
// a small machine). Replies are counted in the in-flight bytes until
// written, so a client reading 64 KiB requests holds at most 4 MiB of
// request and reply buffers (MaxInFlight × 64 KiB), the backlog included.
package nbd
