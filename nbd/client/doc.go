// Package client is a userspace NBD client (NetworkBlockDevice/nbd
// doc/proto.md): fixed newstyle negotiation, optional TLS, structured
// replies, metadata contexts and NBD_CMD_BLOCK_STATUS, over TCP or a unix
// socket. It reads; it does not write. Backups use it to read a
// point-in-time export and ask which blocks are allocated
// (base:allocation) or changed since an earlier point
// (qemu:dirty-bitmap:NAME).
//
// # Negotiation
//
// All integers are big-endian (S: server, C: client):
//
//	S: "NBDMAGIC" (8) | "IHAVEOPT" (8) | handshake flags (2)   FIXED_NEWSTYLE required
//	C: client flags (4)                                         C_FIXED_NEWSTYLE [| C_NO_ZEROES]
//	C: "IHAVEOPT" (8) | option (4) | length (4) | data
//	S: 0x3e889045565a9 (8) | option (4) | reply type (4) | length (4) | data
//
// The client sends, each waiting for its final reply:
//
//	NBD_OPT_STARTTLS          only with Options.TLS; anything but ACK fails
//	NBD_OPT_STRUCTURED_REPLY  ACK, or ERR_UNSUP (then simple replies only)
//	NBD_OPT_SET_META_CONTEXT  export name length (4) | name | n queries (4) | n × (length (4) | query)
//	                          answered by NBD_REP_META_CONTEXT: context id (4) | name, then ACK
//	NBD_OPT_GO                name length (4) | name | 1 (2) | NBD_INFO_BLOCK_SIZE (2)
//	                          answered by NBD_REP_INFO: type (2) | EXPORT: size (8) flags (2);
//	                          BLOCK_SIZE: min (4) preferred (4) max (4); then ACK
//
// A server without NBD_OPT_GO gets NBD_OPT_EXPORT_NAME (size (8) | flags
// (2) | 124 zero bytes unless NO_ZEROES).
//
// # Transmission
//
//	C: 0x25609513 (4) | flags (2) | type (2) | cookie (8) | offset (8) | length (4)
//	S: 0x67446698 (4) | error (4) | cookie (8) | [data, READ without structured replies]
//	S: 0x668e33ef (4) | flags (2) | type (2) | cookie (8) | length (4) | payload
//
// Structured chunk payloads: OFFSET_DATA offset (8) | data; OFFSET_HOLE
// offset (8) | size (4); BLOCK_STATUS context id (4) | n × (length (4) |
// flags (4)); ERROR error (4) | message length (2) | message; ERROR_OFFSET
// the same | offset (8). NBD_REPLY_FLAG_DONE marks a reply's last chunk.
//
// # The server is not trusted
//
// Every length the server announces is checked against a bound before
// anything is allocated or read: option replies (MaxOptionReply, and
// MaxOptionReplies per option), error chunks (MaxErrorChunk), block-status
// chunks (MaxExtents descriptors), content chunks (inside their request,
// never overlapping, at most MaxFragments pieces), the export size
// (≤ 2^63-1) and block size constraints. A read that ends with bytes
// missing, a reply to a cookie not in flight, an unknown chunk type, a
// block-status reply missing a context or describing more than was asked:
// each is a protocol violation (ErrProtocol) that closes the connection. A
// server-reported error (*Error) fails only its request.
//
// A call pipelines its own requests (Options.InFlight); calls from several
// goroutines take turns. Contexts bound every call: a deadline becomes the
// socket's, cancellation interrupts the socket (and, mid-reply, closes the
// connection, whose stream can no longer be trusted).
package client
