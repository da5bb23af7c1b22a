#include "textflag.h"

// GHASH with carry-less multiplies. Blocks are byte-reversed into
// registers (bswap), so that bit i of the polynomial is bit i of the
// 128-bit lane; H is kept multiplied by x (powers in gmac.go), and a
// product's low half is folded twice with the reflected polynomial's
// constant 0xc2<<56 (poly): the construction Intel and Go's own
// crypto/cipher use.

// bswap: reverses the 16 bytes of each 128-bit lane (VPSHUFB), four lanes.
DATA bswap<>+0x00(SB)/8, $0x08090a0b0c0d0e0f
DATA bswap<>+0x08(SB)/8, $0x0001020304050607
DATA bswap<>+0x10(SB)/8, $0x08090a0b0c0d0e0f
DATA bswap<>+0x18(SB)/8, $0x0001020304050607
DATA bswap<>+0x20(SB)/8, $0x08090a0b0c0d0e0f
DATA bswap<>+0x28(SB)/8, $0x0001020304050607
DATA bswap<>+0x30(SB)/8, $0x08090a0b0c0d0e0f
DATA bswap<>+0x38(SB)/8, $0x0001020304050607
GLOBL bswap<>(SB), (NOPTR+RODATA), $64

DATA poly<>+0x00(SB)/8, $0x0000000000000001
DATA poly<>+0x08(SB)/8, $0xc200000000000000
GLOBL poly<>(SB), (NOPTR+RODATA), $16

// reduce folds the 256-bit product hi:lo (X6:X5) into X0, with poly in
// X15; X9 is scratch.
#define REDUCE \
	VPCLMULQDQ $0x01, X5, X15, X9 \
	VPSHUFD    $78, X5, X5        \
	VPXOR      X9, X5, X5         \
	VPCLMULQDQ $0x01, X5, X15, X9 \
	VPSHUFD    $78, X5, X5        \
	VPXOR      X9, X5, X5         \
	VPXOR      X6, X5, X0

// MUL1 multiplies X1 by X13 into X5 (low), X6 (high) with the middle
// terms folded in; X7, X8, X9 scratch.
#define MUL1 \
	VPCLMULQDQ $0x00, X13, X1, X5 \
	VPCLMULQDQ $0x11, X13, X1, X6 \
	VPCLMULQDQ $0x01, X13, X1, X7 \
	VPCLMULQDQ $0x10, X13, X1, X8 \
	VPXOR      X8, X7, X7         \
	VPSLLDQ    $8, X7, X9         \
	VPSRLDQ    $8, X7, X7         \
	VPXOR      X9, X5, X5         \
	VPXOR      X7, X6, X6

// func gfmul(a, b *[16]byte)
TEXT ·gfmul(SB), NOSPLIT, $0-16
	MOVQ   a+0(FP), AX
	MOVQ   b+8(FP), BX
	VMOVDQU (AX), X1
	VMOVDQU (BX), X13
	VMOVDQU poly<>(SB), X15
	MUL1
	REDUCE
	VMOVDQU X0, (AX)
	VZEROUPPER
	RET

// PROD4 multiplies the four blocks of D by the four powers of H into the
// sums Z5 (low), Z6 (high), Z7 (middle); Z8 scratch.
#define PROD4(D, H) \
	VPCLMULQDQ $0x00, H, D, Z8 \
	VPXORQ     Z8, Z5, Z5      \
	VPCLMULQDQ $0x11, H, D, Z8 \
	VPXORQ     Z8, Z6, Z6      \
	VPCLMULQDQ $0x01, H, D, Z8 \
	VPXORQ     Z8, Z7, Z7      \
	VPCLMULQDQ $0x10, H, D, Z8 \
	VPXORQ     Z8, Z7, Z7

// LANES sums the four 128-bit lanes of Z (whose lower halves are Y and
// X) into X; Y9 scratch.
#define LANES(Z, Y, X) \
	VEXTRACTI64X4 $1, Z, Y9 \
	VPXOR         Y9, Y, Y  \
	VEXTRACTI128  $1, Y, X9 \
	VPXOR         X9, X, X

// FOLD sums the four lanes of Z5, Z6, Z7 and the middle terms into the
// 256-bit product X6:X5, and reduces it into X0.
#define FOLD \
	LANES(Z5, Y5, X5) \
	LANES(Z6, Y6, X6) \
	LANES(Z7, Y7, X7) \
	VPSLLDQ       $8, X7, X9 \
	VPSRLDQ       $8, X7, X7 \
	VPXOR         X9, X5, X5 \
	VPXOR         X7, X6, X6 \
	REDUCE

// FIRST4 starts the sums Z5, Z6, Z7 with the products of D's four blocks
// by the four powers of H in P.
#define FIRST4(D, P) \
	VPCLMULQDQ $0x00, P, D, Z5 \
	VPCLMULQDQ $0x11, P, D, Z6 \
	VPCLMULQDQ $0x01, P, D, Z7 \
	VPCLMULQDQ $0x10, P, D, Z8 \
	VPXORQ     Z8, Z7, Z7

// func ghashBlocks(x *[16]byte, t *table, p *byte, n int)
//
// The table holds H^32 .. H^1 (entry j is H^(32-j)): rounds of 32 blocks
// use all of it, a round of 16 its second half, the last blocks H alone.
// In a round, the state joins the first block last, so that the other
// products need not wait for the previous round's reduction.
TEXT ·ghashBlocks(SB), NOSPLIT, $0-32
	MOVQ x+0(FP), AX
	MOVQ t+8(FP), DI
	MOVQ p+16(FP), SI
	MOVQ n+24(FP), CX

	VMOVDQU poly<>(SB), X15
	VMOVDQU bswap<>(SB), X14
	VMOVDQU 496(DI), X13 // H
	VMOVDQU (AX), X0     // the state; VEX zeroes the rest of Z0

	CMPQ CX, $16
	JB   tail
	VMOVDQU64 bswap<>(SB), Z31
	VMOVDQU64 256(DI), Z20 // H^16..H^13
	VMOVDQU64 320(DI), Z21 // H^12..H^9
	VMOVDQU64 384(DI), Z22 // H^8..H^5
	VMOVDQU64 448(DI), Z23 // H^4..H^1
	CMPQ      CX, $32
	JB        loop16
	VMOVDQU64 0(DI), Z16   // H^32..H^29
	VMOVDQU64 64(DI), Z17  // H^28..H^25
	VMOVDQU64 128(DI), Z18 // H^24..H^21
	VMOVDQU64 192(DI), Z19 // H^20..H^17

loop32:
	VMOVDQU64 0(SI), Z1
	VMOVDQU64 64(SI), Z2
	VMOVDQU64 128(SI), Z3
	VMOVDQU64 192(SI), Z4
	VMOVDQU64 256(SI), Z24
	VMOVDQU64 320(SI), Z25
	VMOVDQU64 384(SI), Z26
	VMOVDQU64 448(SI), Z27
	VPSHUFB   Z31, Z1, Z1
	VPSHUFB   Z31, Z2, Z2
	VPSHUFB   Z31, Z3, Z3
	VPSHUFB   Z31, Z4, Z4
	VPSHUFB   Z31, Z24, Z24
	VPSHUFB   Z31, Z25, Z25
	VPSHUFB   Z31, Z26, Z26
	VPSHUFB   Z31, Z27, Z27
	FIRST4(Z2, Z17)
	PROD4(Z3, Z18)
	PROD4(Z4, Z19)
	PROD4(Z24, Z20)
	PROD4(Z25, Z21)
	PROD4(Z26, Z22)
	PROD4(Z27, Z23)
	VPXORQ    Z0, Z1, Z1 // the state into the first block
	PROD4(Z1, Z16)
	FOLD

	ADDQ $512, SI
	SUBQ $32, CX
	CMPQ CX, $32
	JAE  loop32
	CMPQ CX, $16
	JB   tail

loop16:
	VMOVDQU64 0(SI), Z1
	VMOVDQU64 64(SI), Z2
	VMOVDQU64 128(SI), Z3
	VMOVDQU64 192(SI), Z4
	VPSHUFB   Z31, Z1, Z1
	VPSHUFB   Z31, Z2, Z2
	VPSHUFB   Z31, Z3, Z3
	VPSHUFB   Z31, Z4, Z4
	FIRST4(Z2, Z21)
	PROD4(Z3, Z22)
	PROD4(Z4, Z23)
	VPXORQ    Z0, Z1, Z1 // the state into the first block
	PROD4(Z1, Z20)
	FOLD

	ADDQ $256, SI
	SUBQ $16, CX
	CMPQ CX, $16
	JAE  loop16

tail:
	TESTQ CX, CX
	JZ    done

loop1:
	VMOVDQU (SI), X1
	VPSHUFB X14, X1, X1
	VPXOR   X0, X1, X1
	MUL1
	REDUCE
	ADDQ $16, SI
	DECQ CX
	JNZ  loop1

done:
	VMOVDQU X0, (AX)
	VZEROUPPER
	RET
