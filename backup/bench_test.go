package backup_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/repd/repd/backup"
)

// BenchmarkFullBackup measures a full backup of 256 MiB of data (in a
// 512 MiB disk) from qemu-nbd over a unix socket, fsyncs included:
//
//	go test -run '^$' -bench FullBackup -benchtime 3x ./backup
func BenchmarkFullBackup(b *testing.B) {
	d := newDisk(b, 512<<20)
	d.io("write -P 0x3c 0 128M", "write -P 0xc3 300M 128M")
	cp := d.snapshot("s")
	uri := serve(b, cp, "s", "")
	b.SetBytes(256 << 20)
	b.ResetTimer()
	for i := range b.N {
		repo, err := backup.Open(filepath.Join(b.TempDir(), "b", string(rune('a'+i))), backup.Options{})
		if err != nil {
			b.Fatal(err)
		}
		req := backup.Request{Snapshot: "s"}
		if _, err := repo.Backup(context.Background(), dial(b, uri, repo.MetaContexts(req)), req); err != nil {
			b.Fatal(err)
		}
		repo.Close()
	}
}
