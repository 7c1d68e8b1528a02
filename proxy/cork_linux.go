package proxy

import "syscall"

func setCork(raw syscall.RawConn, on int) {
	_ = raw.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CORK, on)
	})
}
