//go:build !amd64

package gmac

const useFast = false

func ghashBlocks(x *[16]byte, t *[32][16]byte, p *byte, n int) { panic("gmac: no vector code") }

func gfmul(a, b *[16]byte) { panic("gmac: no vector code") }
