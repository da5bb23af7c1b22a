package nbd

// ReplySends is how many times replies were handed to a socket so far.
func ReplySends() int64 { return replySends.Load() }
