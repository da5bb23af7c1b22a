package nbd

// Wire values that github.com/pojntfx/go-nbd (Apache-2.0) defines come from
// its protocol package; the rest of the spec's values are defined here.
import gonbd "github.com/pojntfx/go-nbd/pkg/protocol"

// Values of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md). They are
// part of the wire format and must not be changed. Names follow the spec
// without the NBD_ prefix.

// Magic numbers.
const (
	MagicInit            uint64 = gonbd.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC", first 8 bytes the server sends
	MagicOption          uint64 = gonbd.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT", newstyle; also starts every option
	MagicOptionReply     uint64 = gonbd.NEGOTIATION_MAGIC_REPLY    // starts every option reply
	MagicRequest         uint32 = gonbd.TRANSMISSION_MAGIC_REQUEST // starts every transmission request
	MagicSimpleReply     uint32 = gonbd.TRANSMISSION_MAGIC_REPLY   // starts every simple reply
	MagicStructuredReply uint32 = 0x668e33ef                       // starts every structured reply chunk
)

// Handshake flags (16 bits, server → client).
const (
	FlagFixedNewstyle uint16 = gonbd.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	FlagNoZeroes      uint16 = 1 << 1
)

// Client flags (32 bits, client → server).
const (
	FlagCFixedNewstyle uint32 = 1 << 0
	FlagCNoZeroes      uint32 = 1 << 1
)

// Transmission flags (16 bits, per export).
const (
	FlagHasFlags        uint16 = gonbd.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	FlagReadOnly        uint16 = 1 << 1
	FlagSendFlush       uint16 = 1 << 2
	FlagSendFUA         uint16 = 1 << 3
	FlagRotational      uint16 = 1 << 4
	FlagSendTrim        uint16 = 1 << 5
	FlagSendWriteZeroes uint16 = 1 << 6
	FlagSendDF          uint16 = 1 << 7
	FlagCanMultiConn    uint16 = gonbd.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	FlagSendResize      uint16 = 1 << 9
	FlagSendCache       uint16 = 1 << 10
	FlagSendFastZero    uint16 = 1 << 11
)

// Options (client → server during option haggling).
const (
	OptExportName      uint32 = 1
	OptAbort           uint32 = gonbd.NEGOTIATION_ID_OPTION_ABORT
	OptList            uint32 = gonbd.NEGOTIATION_ID_OPTION_LIST
	OptPeekExport      uint32 = 4
	OptStartTLS        uint32 = 5
	OptInfo            uint32 = gonbd.NEGOTIATION_ID_OPTION_INFO
	OptGo              uint32 = gonbd.NEGOTIATION_ID_OPTION_GO
	OptStructuredReply uint32 = 8
	OptListMetaContext uint32 = 9
	OptSetMetaContext  uint32 = 10
	OptExtendedHeaders uint32 = 11
)

// Option reply types. Error replies have bit 31 set.
const (
	RepAck             uint32 = gonbd.NEGOTIATION_TYPE_REPLY_ACK
	RepServer          uint32 = gonbd.NEGOTIATION_TYPE_REPLY_SERVER
	RepInfo            uint32 = gonbd.NEGOTIATION_TYPE_REPLY_INFO
	RepMetaContext     uint32 = 4
	RepFlagError       uint32 = 1 << 31
	RepErrUnsup        uint32 = gonbd.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	RepErrPolicy       uint32 = RepFlagError | 2
	RepErrInvalid      uint32 = RepFlagError | 3
	RepErrPlatform     uint32 = RepFlagError | 4
	RepErrTLSReqd      uint32 = RepFlagError | 5
	RepErrUnknown      uint32 = gonbd.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	RepErrShutdown     uint32 = RepFlagError | 7
	RepErrBlockSizeReq uint32 = RepFlagError | 8
	RepErrTooBig       uint32 = RepFlagError | 9
)

// Information types in NBD_OPT_INFO/NBD_OPT_GO requests and NBD_REP_INFO
// replies.
const (
	InfoExport      uint16 = gonbd.NEGOTIATION_TYPE_INFO_EXPORT      // size (64), transmission flags (16)
	InfoName        uint16 = gonbd.NEGOTIATION_TYPE_INFO_NAME        // canonical name
	InfoDescription uint16 = gonbd.NEGOTIATION_TYPE_INFO_DESCRIPTION // human-readable description
	InfoBlockSize   uint16 = gonbd.NEGOTIATION_TYPE_INFO_BLOCKSIZE   // minimum, preferred, maximum (32 each)
)

// Commands (request type field).
const (
	CmdRead        uint16 = gonbd.TRANSMISSION_TYPE_REQUEST_READ
	CmdWrite       uint16 = gonbd.TRANSMISSION_TYPE_REQUEST_WRITE
	CmdDisc        uint16 = gonbd.TRANSMISSION_TYPE_REQUEST_DISC
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

// Structured reply flags and chunk types.
const (
	ReplyFlagDone uint16 = 1 << 0 // the last chunk of a reply

	ReplyTypeNone        uint16 = 0
	ReplyTypeOffsetData  uint16 = 1
	ReplyTypeOffsetHole  uint16 = 2
	ReplyTypeBlockStatus uint16 = 5
	ReplyTypeError       uint16 = 1<<15 | 1
	ReplyTypeErrorOffset uint16 = 1<<15 | 2
)

// Metadata contexts and their status flags (NBD_REPLY_TYPE_BLOCK_STATUS).
const (
	// ContextBaseAllocation is the spec's base:allocation context.
	ContextBaseAllocation = "base:allocation"
	// DirtyBitmapPrefix starts the names of QEMU's dirty bitmap contexts,
	// qemu:dirty-bitmap:NAME (QEMU's docs/interop/nbd.txt).
	DirtyBitmapPrefix = "qemu:dirty-bitmap:"

	// StateHole (base:allocation): the extent is not allocated.
	StateHole uint32 = 1 << 0
	// StateZero (base:allocation): the extent reads as zeroes.
	StateZero uint32 = 1 << 1
	// StateDirty (qemu:dirty-bitmap:NAME): the extent changed.
	StateDirty uint32 = 1 << 0
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
	ChunkHeaderSize = 20 // magic 4, flags 2, type 2, cookie 8, length 4
)

// MaxString is the longest string the spec allows (export names, context
// names, queries, error messages).
const MaxString = 4096
