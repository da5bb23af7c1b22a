// Package nbd implements an NBD server (fixed newstyle handshake, pipelined
// transmission with simple replies) to the protocol in NetworkBlockDevice/nbd
// doc/proto.md.
//
// It serves any Device. Optional abilities (TRIM, WRITE_ZEROES) are found by
// type assertion. The package knows nothing of replication.
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
// NBD_OPT_ABORT is acknowledged and the connection closed. Any other option
// gets NBD_REP_ERR_UNSUP, its data read and discarded.
//
// Transmission:
//
//	C: 0x25609513 (4) | command flags (2) | type (2) | cookie (8) | offset (8) | length (4) | data (WRITE only)
//	S: 0x67446698 (4) | error (4) | cookie (8) | data (READ with error 0 only)
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
// rates); otherwise, and while a large WRITE payload arrives in pieces, it
// waits in the netpoller.
// A refused request gets an error reply and the connection goes on (a
// refused WRITE's payload is read and discarded); only broken framing (bad
// request magic, a WRITE longer than MaxPayload, a truncated stream) closes
// a connection, after its in-flight requests have been answered.
package nbd
