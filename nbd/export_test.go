package nbd

// ReplySends is how many times the replies of the server's open
// connections were handed to their sockets so far.
func (s *Server) ReplySends() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for c := range s.conns {
		n += c.rw.sends.Load()
	}
	return n
}
