//go:build ignore

// bigtcp sets the loopback device's gso_ipv4_max_size and
// gro_ipv4_max_size (BIG TCP for IPv4; IFLA_GSO_IPV4_MAX_SIZE and
// IFLA_GRO_IPV4_MAX_SIZE, Linux 6.3 and later) through rtnetlink, which
// this machine's iproute2 6.1 cannot. It changes the machine: restore the
// default afterwards. Root, from the module root:
//
//	go run bench/results/2026-12-07-vm-session23/bigtcp.go 524280   # TCP segments of up to 512 KiB on lo
//	go run bench/results/2026-12-07-vm-session23/bigtcp.go 65536    # the default
package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

const (
	iflaGSOIPv4MaxSize = 63
	iflaGROIPv4MaxSize = 64
)

func attr(t uint16, v uint32) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint16(b[0:], 8)
	binary.LittleEndian.PutUint16(b[2:], t)
	binary.LittleEndian.PutUint32(b[4:], v)
	return b
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: bigtcp BYTES (65536 is the default, 524280 lo's most)")
		os.Exit(2)
	}
	size, err := strconv.ParseUint(os.Args[1], 10, 32)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bigtcp:", err)
		os.Exit(2)
	}
	lo, err := os.ReadFile("/sys/class/net/lo/ifindex")
	if err != nil {
		panic(err)
	}
	index, err := strconv.Atoi(string(lo[:len(lo)-1]))
	if err != nil {
		panic(err)
	}
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW, syscall.NETLINK_ROUTE)
	if err != nil {
		panic(err)
	}
	defer syscall.Close(fd)
	body := make([]byte, 16) // struct ifinfomsg
	binary.LittleEndian.PutUint32(body[4:], uint32(index))
	body = append(body, attr(iflaGSOIPv4MaxSize, uint32(size))...)
	body = append(body, attr(iflaGROIPv4MaxSize, uint32(size))...)
	msg := make([]byte, 16) // struct nlmsghdr
	binary.LittleEndian.PutUint32(msg[0:], uint32(16+len(body)))
	binary.LittleEndian.PutUint16(msg[4:], syscall.RTM_NEWLINK)
	binary.LittleEndian.PutUint16(msg[6:], syscall.NLM_F_REQUEST|syscall.NLM_F_ACK)
	binary.LittleEndian.PutUint32(msg[8:], 1)
	if err := syscall.Sendto(fd, append(msg, body...), 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		panic(err)
	}
	buf := make([]byte, 4096)
	n, _, err := syscall.Recvfrom(fd, buf, 0)
	if err != nil {
		panic(err)
	}
	if n < 20 {
		panic("short netlink answer")
	}
	if e := int32(binary.LittleEndian.Uint32(buf[16:20])); e != 0 {
		fmt.Fprintln(os.Stderr, "bigtcp: the kernel refused:", syscall.Errno(-e))
		os.Exit(1)
	}
	fmt.Printf("lo: gso_ipv4_max_size and gro_ipv4_max_size %d\n", size)
}
