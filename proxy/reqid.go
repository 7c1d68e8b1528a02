package proxy

import (
	"crypto/rand"
	"strconv"
	"strings"
	"sync/atomic"
	"unsafe"
)

// requestIDs names requests: a random prefix drawn once per Handler and a
// counter, so an id costs an atomic add and one small allocation on the hot
// path, not a read of crypto/rand. Ids look like "k7q2m4xa-3f".
type requestIDs struct {
	prefix string // 8 base32 characters, 40 random bits
	n      atomic.Uint64
}

func newRequestIDs() *requestIDs {
	return &requestIDs{prefix: strings.ToLower(rand.Text()[:8])}
}

// idValue is a request id and the header value that carries it, allocated
// together.
type idValue struct {
	hdr [1]string
	b   [8 + 1 + 13]byte // prefix, '-', a uint64 in base32
}

// next returns a new id as a one-element header value.
func (g *requestIDs) next() []string {
	v := new(idValue)
	b := append(v.b[:0], g.prefix...)
	b = append(b, '-')
	b = strconv.AppendUint(b, g.n.Add(1), 32)
	// v.b is never written again, so the string may share it (as
	// strings.Builder does): one allocation for both id and header value.
	v.hdr[0] = unsafe.String(&v.b[0], len(b))
	return v.hdr[:]
}

// maxRequestID bounds a client's X-Request-Id that berth keeps.
const maxRequestID = 64

// requestID returns the request's id as a header value: the client's own
// X-Request-Id if it is short and plain ([A-Za-z0-9._-], at most 64 bytes),
// so that a proxy in front and berth log the same id; a new one otherwise.
func (g *requestIDs) requestID(in []string) []string {
	if len(in) == 1 && validRequestID(in[0]) {
		return in[:1:1] // shared with the request's header: an append must copy
	}
	return g.next()
}

func validRequestID(s string) bool {
	if s == "" || len(s) > maxRequestID {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
