package nbd

// Values of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md). They are
// part of the wire format and must not be changed. Names follow the spec
// without the NBD_ prefix.

// Magic numbers.
const (
	MagicInit        uint64 = 0x4e42444d41474943 // "NBDMAGIC", first 8 bytes the server sends
	MagicOption      uint64 = 0x49484156454f5054 // "IHAVEOPT", newstyle; also starts every option
	MagicOptionReply uint64 = 0x0003e889045565a9 // starts every option reply
	MagicRequest     uint32 = 0x25609513         // starts every transmission request
	MagicSimpleReply uint32 = 0x67446698         // starts every simple reply
)

// Handshake flags (16 bits, server → client).
const (
	FlagFixedNewstyle uint16 = 1 << 0
	FlagNoZeroes      uint16 = 1 << 1
)

// Client flags (32 bits, client → server).
const (
	FlagCFixedNewstyle uint32 = 1 << 0
	FlagCNoZeroes      uint32 = 1 << 1
)

// Transmission flags (16 bits, per export).
const (
	FlagHasFlags        uint16 = 1 << 0
	FlagReadOnly        uint16 = 1 << 1
	FlagSendFlush       uint16 = 1 << 2
	FlagSendFUA         uint16 = 1 << 3
	FlagRotational      uint16 = 1 << 4
	FlagSendTrim        uint16 = 1 << 5
	FlagSendWriteZeroes uint16 = 1 << 6
	FlagSendDF          uint16 = 1 << 7
	FlagCanMultiConn    uint16 = 1 << 8
	FlagSendResize      uint16 = 1 << 9
	FlagSendCache       uint16 = 1 << 10
	FlagSendFastZero    uint16 = 1 << 11
)

// Options (client → server during option haggling).
const (
	OptExportName      uint32 = 1
	OptAbort           uint32 = 2
	OptList            uint32 = 3
	OptPeekExport      uint32 = 4
	OptStartTLS        uint32 = 5
	OptInfo            uint32 = 6
	OptGo              uint32 = 7
	OptStructuredReply uint32 = 8
	OptListMetaContext uint32 = 9
	OptSetMetaContext  uint32 = 10
	OptExtendedHeaders uint32 = 11
)

// Option reply types. Error replies have bit 31 set.
const (
	RepAck             uint32 = 1
	RepServer          uint32 = 2
	RepInfo            uint32 = 3
	RepMetaContext     uint32 = 4
	RepFlagError       uint32 = 1 << 31
	RepErrUnsup        uint32 = RepFlagError | 1
	RepErrPolicy       uint32 = RepFlagError | 2
	RepErrInvalid      uint32 = RepFlagError | 3
	RepErrPlatform     uint32 = RepFlagError | 4
	RepErrTLSReqd      uint32 = RepFlagError | 5
	RepErrUnknown      uint32 = RepFlagError | 6
	RepErrShutdown     uint32 = RepFlagError | 7
	RepErrBlockSizeReq uint32 = RepFlagError | 8
	RepErrTooBig       uint32 = RepFlagError | 9
)

// Information types in NBD_OPT_INFO/NBD_OPT_GO requests and NBD_REP_INFO
// replies.
const (
	InfoExport      uint16 = 0 // size (64), transmission flags (16)
	InfoName        uint16 = 1 // canonical name
	InfoDescription uint16 = 2 // human-readable description
	InfoBlockSize   uint16 = 3 // minimum, preferred, maximum (32 each)
)

// Commands (request type field).
const (
	CmdRead        uint16 = 0
	CmdWrite       uint16 = 1
	CmdDisc        uint16 = 2
	CmdFlush       uint16 = 3
	CmdTrim        uint16 = 4
	CmdCache       uint16 = 5
	CmdWriteZeroes uint16 = 6
	CmdBlockStatus uint16 = 7
	CmdResize      uint16 = 8
)

// Command flags (request flags field).
const (
	CmdFlagFUA        uint16 = 1 << 0
	CmdFlagNoHole     uint16 = 1 << 1
	CmdFlagDF         uint16 = 1 << 2
	CmdFlagReqOne     uint16 = 1 << 3
	CmdFlagFastZero   uint16 = 1 << 4
	CmdFlagPayloadLen uint16 = 1 << 5
)

// Error values in replies. They happen to equal Linux errno values.
const (
	EPERM     uint32 = 1
	EIO       uint32 = 5
	ENOMEM    uint32 = 12
	EINVAL    uint32 = 22
	ENOSPC    uint32 = 28
	EOVERFLOW uint32 = 75
	ENOTSUP   uint32 = 95
	ESHUTDOWN uint32 = 108
)

// Sizes of fixed-size messages.
const (
	RequestSize     = 28 // magic 4, flags 2, type 2, cookie 8, offset 8, length 4
	SimpleReplySize = 16 // magic 4, error 4, cookie 8
)
