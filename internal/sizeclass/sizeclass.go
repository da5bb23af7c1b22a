// Package sizeclass rounds buffer lengths up to power-of-two size
// classes and pools buffers by class (Pool), for the NBD server's
// payloads and the replica's write data: a pooled buffer is then less
// than twice what it holds, and a bound on memory counts the rounded size
// (Cap).
package sizeclass

import "math/bits"

// Of is the class of a buffer of n bytes, the smallest of 1<<minShift
// bytes: 0 up to 1<<minShift bytes, k up to 1<<(minShift+k).
func Of(n, minShift int) int {
	if n <= 1<<minShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minShift
}

// Cap is n rounded up to its class, or n itself from class classes on
// (a pool of that many classes does not hold such buffers).
func Cap(n, minShift, classes int) int {
	if c := Of(n, minShift); c < classes {
		return 1 << (c + minShift)
	}
	return n
}
