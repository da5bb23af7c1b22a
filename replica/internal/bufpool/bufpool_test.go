package bufpool

import (
	"testing"

	"github.com/repd/repd/protocol"
)

func TestClassesCoverMaxData(t *testing.T) {
	if 1<<maxShift != protocol.MaxData {
		t.Fatalf("largest class %d bytes, a frame's data %d", 1<<maxShift, protocol.MaxData)
	}
}

func TestSizeClasses(t *testing.T) {
	for _, c := range []struct{ n, cap int }{
		{1, 512}, {512, 512}, {513, 1024}, {1536, 2048}, {4096, 4096}, {4097, 8192}, {4608, 8192}, {8192, 8192},
		{12288, 16384}, {16384, 16384}, {65536, 65536}, {69632, 131072},
		{protocol.MaxData - 512, protocol.MaxData}, {protocol.MaxData, protocol.MaxData},
	} {
		if got := Cap(c.n); got != c.cap {
			t.Errorf("Cap(%d) = %d, want %d", c.n, got, c.cap)
		}
		b, pb := Get(c.n)
		if len(b) != c.n || pb == nil || cap(*pb) != c.cap {
			t.Fatalf("Get(%d): len %d, pooled %v", c.n, len(b), pb != nil)
		}
		Put(pb)
	}
	b, pb := Get(protocol.MaxData + 1)
	if len(b) != protocol.MaxData+1 || pb != nil || Cap(protocol.MaxData+1) != protocol.MaxData+1 {
		t.Fatalf("a buffer above the largest class is pooled")
	}
	Put(nil)
	odd := make([]byte, 5000)
	Put(&odd) // not a class's size: ignored, never handed out
	for range 8 {
		if b, pb := Get(5000); cap(*pb) != 8192 {
			t.Fatalf("Get(5000) returned a buffer of %d bytes (%d long)", cap(*pb), len(b))
		}
	}
}
