package bufpool

import (
	"testing"

	"github.com/repd/repd/protocol"
)

func TestSizeClasses(t *testing.T) {
	for _, n := range []int{1, 4096, 4097, 64 << 10, protocol.MaxData} {
		b, pb := Get(n)
		if len(b) != n || pb == nil || cap(*pb) < n {
			t.Fatalf("Get(%d): len %d, pooled %v", n, len(b), pb != nil)
		}
		Put(pb)
	}
	b, pb := Get(protocol.MaxData + 1)
	if len(b) != protocol.MaxData+1 || pb != nil {
		t.Fatalf("a buffer above the largest class is pooled")
	}
	Put(nil)
}
