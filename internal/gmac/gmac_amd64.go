package gmac

import "golang.org/x/sys/cpu"

// useFast: the vector code's instructions are there (x/sys/cpu also
// checks that the OS saves the 512-bit registers).
var useFast = cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VPCLMULQDQ &&
	cpu.X86.HasAVX2 && cpu.X86.HasPCLMULQDQ

// ghashBlocks hashes n 16-byte blocks at p into *x: 32 and then 16 at a
// time with the powers in t, the rest one at a time with H (t[31]).
//
//go:noescape
func ghashBlocks(x *[16]byte, t *[32][16]byte, p *byte, n int)

// gfmul sets *a to a·b (multiplier's representation).
//
//go:noescape
func gfmul(a, b *[16]byte)
