package client

// Wire values of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md). The
// ones github.com/pojntfx/go-nbd (Apache-2.0) defines come from its protocol
// package; the rest are defined here. They are part of the wire format and
// must not be changed. Names follow the spec without the NBD_ prefix.
import gonbd "github.com/pojntfx/go-nbd/pkg/protocol"

const (
	magicInit            uint64 = gonbd.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicOption          uint64 = gonbd.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicOldstyle        uint64 = 0x00420281861253                 // cliserv_magic: an oldstyle server
	magicOptionReply     uint64 = gonbd.NEGOTIATION_MAGIC_REPLY
	magicRequest         uint32 = gonbd.TRANSMISSION_MAGIC_REQUEST
	magicSimpleReply     uint32 = gonbd.TRANSMISSION_MAGIC_REPLY
	magicStructuredReply uint32 = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle  uint16 = gonbd.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	flagNoZeroes       uint16 = 1 << 1
	flagCFixedNewstyle uint32 = 1 << 0
	flagCNoZeroes      uint32 = 1 << 1
)

// Transmission flags (per export).
const (
	FlagHasFlags     uint16 = gonbd.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	FlagReadOnly     uint16 = 1 << 1
	FlagSendFlush    uint16 = 1 << 2
	FlagSendFUA      uint16 = 1 << 3
	FlagSendDF       uint16 = 1 << 7
	FlagCanMultiConn uint16 = gonbd.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
)

// Options.
const (
	optExportName      uint32 = 1
	optAbort           uint32 = gonbd.NEGOTIATION_ID_OPTION_ABORT
	optList            uint32 = gonbd.NEGOTIATION_ID_OPTION_LIST
	optStartTLS        uint32 = 5
	optInfo            uint32 = gonbd.NEGOTIATION_ID_OPTION_INFO
	optGo              uint32 = gonbd.NEGOTIATION_ID_OPTION_GO
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
)

// Option reply types; errors have bit 31 set.
const (
	repAck             uint32 = gonbd.NEGOTIATION_TYPE_REPLY_ACK
	repServer          uint32 = gonbd.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo            uint32 = gonbd.NEGOTIATION_TYPE_REPLY_INFO
	repMetaContext     uint32 = 4
	repFlagError       uint32 = 1 << 31
	repErrUnsup        uint32 = gonbd.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrPolicy       uint32 = repFlagError | 2
	repErrInvalid      uint32 = repFlagError | 3
	repErrPlatform     uint32 = repFlagError | 4
	repErrTLSReqd      uint32 = repFlagError | 5
	repErrUnknown      uint32 = gonbd.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	repErrShutdown     uint32 = repFlagError | 7
	repErrBlockSizeReq uint32 = repFlagError | 8
	repErrTooBig       uint32 = repFlagError | 9
)

// Information types in NBD_OPT_GO/NBD_OPT_INFO.
const (
	infoExport    uint16 = gonbd.NEGOTIATION_TYPE_INFO_EXPORT    // size (64), transmission flags (16)
	infoBlockSize uint16 = gonbd.NEGOTIATION_TYPE_INFO_BLOCKSIZE // minimum, preferred, maximum (32 each)
)

// Commands and command flags.
const (
	cmdRead        uint16 = gonbd.TRANSMISSION_TYPE_REQUEST_READ
	cmdDisc        uint16 = gonbd.TRANSMISSION_TYPE_REQUEST_DISC
	cmdBlockStatus uint16 = 7
	cmdFlagReqOne  uint16 = 1 << 3
)

// Structured reply flags and chunk types.
const (
	replyFlagDone           uint16 = 1 << 0
	replyTypeNone           uint16 = 0
	replyTypeOffsetData     uint16 = 1
	replyTypeOffsetHole     uint16 = 2
	replyTypeBlockStatus    uint16 = 5
	replyTypeErrorBit       uint16 = 1 << 15
	replyTypeError          uint16 = replyTypeErrorBit | 1
	replyTypeErrorOffset    uint16 = replyTypeErrorBit | 2
	requestSize                    = 28 // magic 4, flags 2, type 2, cookie 8, offset 8, length 4
	simpleReplyRestSize            = 12 // after the magic: error 4, cookie 8
	structuredReplyRestSize        = 16 // after the magic: flags 2, type 2, cookie 8, length 4
	optionReplyHeaderSize          = 20 // magic 8, option 4, type 4, length 4
)

// Metadata contexts and their status flags.
const (
	// ContextAllocation is the spec's base:allocation context.
	ContextAllocation = "base:allocation"
	// StateHole (base:allocation): the extent is not allocated.
	StateHole uint32 = 1 << 0
	// StateZero (base:allocation): the extent reads as zeroes.
	StateZero uint32 = 1 << 1
	// StateDirty (qemu:dirty-bitmap:NAME): the extent changed since the
	// bitmap's point in time.
	StateDirty uint32 = 1 << 0
	// dirtyBitmapPrefix names QEMU's dirty-bitmap contexts.
	dirtyBitmapPrefix = "qemu:dirty-bitmap:"
)

// DirtyBitmapContext is the metadata context of the dirty bitmap name,
// named as QEMU names it: the blocks changed between the bitmap's point in
// time and the export's.
func DirtyBitmapContext(name string) string { return dirtyBitmapPrefix + name }

// Bounds on what a server may make the client hold. The server is untrusted
// until the transmission phase ends: every length it announces is checked
// against one of these before anything is allocated or read.
const (
	// MaxOptionReply bounds one option reply's data. The spec's strings are
	// at most 4096 bytes; every reply the client understands is smaller
	// than 4096+8.
	MaxOptionReply = 64 << 10
	// MaxOptionReplies bounds the replies to one option before its final
	// one (NBD_REP_SERVER to NBD_OPT_LIST, NBD_REP_META_CONTEXT, NBD_REP_INFO).
	MaxOptionReplies = 4096
	// MaxErrorChunk bounds an error chunk's payload: error 4, message length
	// 2, a message of at most 4096 bytes, offset 8.
	MaxErrorChunk = 6 + 4096 + 8
	// MaxExtents bounds the descriptors in one block-status chunk (8 bytes
	// each); requests are sized so that an honest server stays below it.
	MaxExtents = 1 << 17
	// MaxFragments bounds the separate pieces one READ reply may arrive in
	// before they join up (chunks may come in any order).
	MaxFragments = 1 << 14
	// maxStringLen is the spec's bound on names and messages.
	maxStringLen = 4096
)
