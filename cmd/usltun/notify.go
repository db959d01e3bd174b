package main

import (
	"fmt"
	"net"
	"os"
)

// sdNotify tells the service manager about the daemon's state, as
// sd_notify(3) does: one datagram of newline-separated VAR=value lines to
// the Unix socket named by $NOTIFY_SOCKET (a path, or @name for an abstract
// socket). Without the variable, outside a Type=notify unit, it does
// nothing. Only the states that systemd acts on are sent: READY=1 once the
// device and its routes are up, STOPPING=1 when shutdown begins.
func sdNotify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if name[0] != '/' && name[0] != '@' {
		return fmt.Errorf("NOTIFY_SOCKET=%q: want a path or @name", name)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify service manager: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify service manager: %w", err)
	}
	return nil
}
