//go:build !linux

package proxy

import "syscall"

func setCork(syscall.RawConn, int) {}
