package main

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/rs/zerolog"
)

// sdNotify sends state ("READY=1") to the service manager, by the protocol
// sd_notify(3) documents: one datagram on the unix socket named by
// $NOTIFY_SOCKET, where a name starting with '@' is in the abstract
// namespace (Go's net package maps '@' to the leading NUL itself). Without
// NOTIFY_SOCKET (not started by systemd, or not Type=notify) it does nothing.
func sdNotify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if name[0] != '/' && name[0] != '@' {
		return fmt.Errorf("NOTIFY_SOCKET=%q: only unix socket paths and abstract names are supported", name)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("NOTIFY_SOCKET: %w", err)
	}
	_, err = conn.Write([]byte(state))
	return errors.Join(err, conn.Close())
}

// notifyReady tells systemd (Type=notify) that berth accepts connections.
// A failure is logged, never fatal: berth serves either way, and systemd
// reports the missing readiness itself.
func notifyReady(log zerolog.Logger) {
	if err := sdNotify("READY=1"); err != nil {
		log.Warn().Err(err).Msg("cannot tell systemd that berth is ready")
	}
}

// notifyStopping tells systemd that shutdown has begun, so that it shows
// the unit as deactivating while in-flight requests finish.
func notifyStopping(log zerolog.Logger) {
	if err := sdNotify("STOPPING=1"); err != nil {
		log.Warn().Err(err).Msg("cannot tell systemd that berth is stopping")
	}
}
