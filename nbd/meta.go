package nbd

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"
)

// metaContext is a context a connection selected: its id on the wire and
// its name.
type metaContext struct {
	id   uint32
	name string
}

// metaQuery is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT:
//
//	export name length (4) | export name | n queries (4) | n × (query length (4) | query)
type metaQuery struct {
	export  string
	queries []string
}

// optionError is an option that gets an error reply: its type and the
// message for the client.
type optionError struct {
	typ uint32
	msg string
}

func (e *optionError) Error() string { return e.msg }

// parseMetaQuery checks the option data strictly: every length inside the
// data, every string at most MaxString bytes, at most maxMetaQueries
// queries, nothing left over.
func parseMetaQuery(data []byte) (metaQuery, *optionError) {
	var q metaQuery
	invalid := func(format string, a ...any) (metaQuery, *optionError) {
		return metaQuery{}, &optionError{RepErrInvalid, fmt.Sprintf(format, a...)}
	}
	if len(data) < 8 {
		return invalid("meta context option of %d bytes: want export name length (4), name, query count (4), queries", len(data))
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-8) {
		return invalid("export name length %d exceeds the option data", nameLen)
	}
	if nameLen > MaxString {
		return invalid("export name of %d bytes: at most %d", nameLen, MaxString)
	}
	q.export = string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	count := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if count > maxMetaQueries {
		return metaQuery{}, &optionError{RepErrTooBig, fmt.Sprintf("%d queries in one option: at most %d", count, maxMetaQueries)}
	}
	if uint64(count)*4 > uint64(len(rest)) {
		return invalid("%d queries do not fit in %d bytes of option data", count, len(rest))
	}
	q.queries = make([]string, 0, count)
	for i := range count {
		if len(rest) < 4 {
			return invalid("query %d: length missing", i)
		}
		l := binary.BigEndian.Uint32(rest)
		rest = rest[4:]
		if uint64(l) > uint64(len(rest)) {
			return invalid("query %d: length %d exceeds the option data", i, l)
		}
		if l > MaxString {
			return invalid("query %d of %d bytes: at most %d", i, l, MaxString)
		}
		q.queries = append(q.queries, string(rest[:l]))
		rest = rest[l:]
	}
	if len(rest) != 0 {
		return invalid("%d bytes after the last query", len(rest))
	}
	return q, nil
}

// namespace splits a context name or query at its first colon. ok is
// false unless the namespace is a non-empty run of printable characters
// other than spaces and the whole is valid UTF-8 without NUL.
func namespace(s string) (ns, leaf string, ok bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 || !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
		return "", "", false
	}
	for _, r := range s[:i] {
		if r <= ' ' || r == 0x7f {
			return "", "", false
		}
	}
	return s[:i], s[i+1:], true
}

// validContextName reports whether a Device's context name may be offered:
// NAMESPACE:LEAF with a leaf, outside the base namespace, at most
// MaxString bytes.
func validContextName(name string) bool {
	ns, leaf, ok := namespace(name)
	return ok && leaf != "" && ns != "base" && len(name) <= MaxString
}

// contextNames lists what export e offers: base:allocation, then the
// Device's own contexts that are valid names, without duplicates.
func (c *conn) contextNames(e Export) []string {
	names := []string{ContextBaseAllocation}
	mc, ok := e.Device.(MetaContexts)
	if !ok {
		return names
	}
	seen := map[string]bool{ContextBaseAllocation: true}
	for _, n := range mc.MetaContexts() {
		if seen[n] {
			continue
		}
		if !validContextName(n) {
			c.log.Debug("nbd: device offers an invalid metadata context name; ignored", "export", e.Name, "context", n)
			continue
		}
		seen[n] = true
		names = append(names, n)
	}
	return names
}

// listContexts answers NBD_OPT_LIST_META_CONTEXT's queries against names:
// no query lists everything; a query ending in a colon ("base:", "qemu:",
// "qemu:dirty-bitmap:") lists every name it starts; another query lists
// the name it equals. Queries that are not NAMESPACE:... match nothing
// (as with qemu-nbd). Each name is listed once, in the export's order.
func listContexts(names, queries []string) []string {
	if len(queries) == 0 {
		return names
	}
	var out []string
	for _, n := range names {
		for _, q := range queries {
			if _, _, ok := namespace(q); !ok {
				continue
			}
			if n == q || strings.HasSuffix(q, ":") && strings.HasPrefix(n, q) {
				out = append(out, n)
				break
			}
		}
	}
	return out
}

// selectContexts answers NBD_OPT_SET_META_CONTEXT's queries against names:
// a query selects the name it equals (wildcards select nothing, as the
// spec recommends), each name once, in the client's order.
func selectContexts(names, queries []string) []string {
	offered := make(map[string]bool, len(names))
	for _, n := range names {
		offered[n] = true
	}
	var out []string
	for _, q := range queries {
		if offered[q] {
			out = append(out, q)
			delete(offered, q)
		}
	}
	return out
}

// metaOption answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. SET replaces the connection's selection, also
// when it fails.
func (c *conn) metaOption(opt uint32, data []byte) {
	set := opt == OptSetMetaContext
	if set {
		c.metas, c.metaExport = nil, ""
		if !c.structured {
			c.optError(opt, RepErrInvalid, "NBD_OPT_SET_META_CONTEXT needs structured replies: send NBD_OPT_STRUCTURED_REPLY first")
			return
		}
	}
	q, oerr := parseMetaQuery(data)
	if oerr != nil {
		c.optError(opt, oerr.typ, oerr.msg)
		return
	}
	e, found := c.srv.lookup(q.export)
	if !found {
		c.optError(opt, RepErrUnknown, "unknown export "+quoteName(q.export))
		return
	}
	names := c.contextNames(e)
	if !set {
		for _, n := range listContexts(names, q.queries) {
			c.optReply(opt, RepMetaContext, append(make([]byte, 4, 4+len(n)), n...))
		}
		c.optReply(opt, RepAck, nil)
		return
	}
	sel := selectContexts(names, q.queries)
	if max := c.srv.maxMetaContexts(); len(sel) > max {
		c.optError(opt, RepErrTooBig, fmt.Sprintf("the queries select %d metadata contexts: at most %d per connection", len(sel), max))
		return
	}
	metas := make([]metaContext, len(sel))
	for i, n := range sel {
		metas[i] = metaContext{id: uint32(i + 1), name: n}
		var id [4]byte
		binary.BigEndian.PutUint32(id[:], metas[i].id)
		c.optReply(opt, RepMetaContext, append(id[:], n...))
	}
	c.optReply(opt, RepAck, nil)
	c.metas, c.metaExport = metas, q.export
}
