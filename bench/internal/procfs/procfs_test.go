package procfs

import (
	"os"
	"testing"
	"time"
)

func TestProcCPU(t *testing.T) {
	self, err := CPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn some CPU; the reading must grow (USER_HZ ticks: 10 ms).
	end := time.Now().Add(100 * time.Millisecond)
	for x := 0; time.Now().Before(end); x++ {
		_ = x * x
	}
	after, err := CPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after <= self {
		t.Errorf("CPU time %v after 100 ms of spinning, %v before: want more", after, self)
	}
	if got := TreeCPU(os.Getpid()); got < after {
		t.Errorf("TreeCPU %v < CPU %v of the same process", got, after)
	}
	if _, err := CPU(1 << 30); err == nil {
		t.Error("CPU of a pid that cannot exist: no error")
	}
}
