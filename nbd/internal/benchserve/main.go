// Command benchserve serves a file over NBD on a unix socket, for comparing
// the nbd package with other servers under fio. Not part of repd.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"

	"github.com/repd/repd/nbd"
	"golang.org/x/sys/unix"
)

type fileDev struct {
	f    *os.File
	size int64
}

func (d *fileDev) Size() int64 { return d.size }
func (d *fileDev) ReadAt(_ context.Context, p []byte, off int64) error {
	_, err := d.f.ReadAt(p, off)
	return err
}
func (d *fileDev) WriteAt(_ context.Context, p []byte, off int64, fua bool) error {
	if _, err := d.f.WriteAt(p, off); err != nil {
		return err
	}
	if fua {
		return unix.Fdatasync(int(d.f.Fd()))
	}
	return nil
}
func (d *fileDev) Flush(context.Context) error { return unix.Fdatasync(int(d.f.Fd())) }

func main() {
	sock := flag.String("socket", "/tmp/bench.sock", "unix socket")
	tcp := flag.String("tcp", "", "tcp address instead")
	file := flag.String("file", "", "backing file")
	inflight := flag.Int("inflight", 0, "MaxInFlight")
	prof := flag.String("cpuprofile", "", "write a CPU profile here")
	flag.Parse()
	if *prof != "" {
		pf, err := os.Create(*prof)
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(pf)
		defer pprof.StopCPUProfile()
	}
	f, err := os.OpenFile(*file, os.O_RDWR, 0)
	if err != nil {
		log.Fatal(err)
	}
	st, _ := f.Stat()
	var l net.Listener
	if *tcp != "" {
		l, err = net.Listen("tcp", *tcp)
	} else {
		os.Remove(*sock)
		l, err = net.Listen("unix", *sock)
	}
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()
	srv := &nbd.Server{MaxInFlight: *inflight, Exports: []nbd.Export{{Device: &fileDev{f: f, size: st.Size()}}}}
	log.Println(srv.Serve(ctx, l))
}
