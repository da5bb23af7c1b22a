package nbd

// MaxRetained and CopyReplyMax are maxRetained and copyReplyMax, for the
// tests of the reply batch (retain_test.go).
const (
	MaxRetained  = maxRetained
	CopyReplyMax = copyReplyMax
)

// ReplyBatch is what the reply writer of a connection holds between
// writes (replies.go): the batch of replies pending, the spare batch kept
// for reuse, whether a writer is at work, and the bytes counted in the
// connection's reply backlog.
type ReplyBatch struct {
	PendingLen, PendingCap, SpareCap int
	Writing                          bool
	Backlog                          int64
}

// ReplyBatches reports the reply batch of each of the server's open
// connections.
func (s *Server) ReplyBatches() []ReplyBatch {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ReplyBatch
	for c := range s.conns {
		w := &c.rw
		w.mu.Lock()
		out = append(out, ReplyBatch{PendingLen: len(w.pending), PendingCap: cap(w.pending), SpareCap: cap(w.spare),
			Writing: w.writing, Backlog: c.gate.backlog.Load()})
		w.mu.Unlock()
	}
	return out
}
