package sizeclass

import "sync"

// Pool holds buffers in power-of-two classes, from 1<<minShift bytes
// (class 0) to 1<<(minShift+classes-1); larger buffers are made for each
// Get and dropped by Put. Whoever holds a *[]byte from Get owns it until
// it calls Put.
type Pool struct {
	minShift, classes int
	pools             []sync.Pool
}

// NewPool returns a pool of classes classes, the smallest of
// 1<<minShift bytes.
func NewPool(minShift, classes int) *Pool {
	return &Pool{minShift: minShift, classes: classes, pools: make([]sync.Pool, classes)}
}

// Cap is the memory a buffer of n bytes from Get takes: n rounded up to
// its class, n itself above the largest class.
func (p *Pool) Cap(n int) int { return Cap(n, p.minShift, p.classes) }

// Pooled says whether a buffer of n bytes comes from a class.
func (p *Pool) Pooled(n int) bool { return Of(n, p.minShift) < p.classes }

// Get returns a buffer of length n, its capacity Cap(n). Its contents are
// undefined.
func (p *Pool) Get(n int) *[]byte {
	c := Of(n, p.minShift)
	if c >= p.classes {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.pools[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+p.minShift))
	return &b
}

// Put hands a buffer back to its class; nil, and a buffer whose capacity
// is not a class's size (one above the largest class, or one that did not
// come from Get), are ignored.
func (p *Pool) Put(b *[]byte) {
	if b == nil {
		return
	}
	if c := Of(cap(*b), p.minShift); c < p.classes && cap(*b) == 1<<(c+p.minShift) {
		p.pools[c].Put(b)
	}
}
