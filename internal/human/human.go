// Package human formats quantities for people: byte counts, bit rates and
// ages, in the one style every usltun command and tool prints them.
//
// Bytes use binary units with at most four digits, so table columns stay
// narrow ("999.0 MiB", then "0.98 GiB"); rates use decimal bit units, as
// network tools do; ages read like wg show ("1 minute, 2 seconds").
package human

import (
	"fmt"
	"strings"
	"time"
)

// Bytes formats n bytes: "0 B", "1.5 KiB", "5.0 MiB", "3.00 GiB".
// A negative n is formatted as its magnitude with a minus sign.
func Bytes(n int64) string {
	if n < 0 {
		return "-" + Bytes(-n)
	}
	switch {
	case n >= 1000<<30:
		return fmt.Sprintf("%.2f TiB", float64(n)/(1<<40))
	case n >= 1000<<20:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1000<<10:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1000:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// Rate formats bits per second: "47 kbit/s", "785 Mbit/s", "2.52 Gbit/s".
func Rate(bps float64) string {
	switch {
	case bps >= 1e9:
		return fmt.Sprintf("%.2f Gbit/s", bps/1e9)
	case bps >= 1e6:
		return fmt.Sprintf("%.0f Mbit/s", bps/1e6)
	case bps >= 1e3:
		return fmt.Sprintf("%.0f kbit/s", bps/1e3)
	}
	return fmt.Sprintf("%.0f bit/s", bps)
}

// Age formats a duration in whole seconds, largest unit first, as wg show
// prints the latest handshake: "1 minute, 2 seconds". Below one second it
// is "0 seconds".
func Age(d time.Duration) string {
	d = d.Round(time.Second)
	if d < time.Second {
		return "0 seconds"
	}
	units := []struct {
		name string
		size time.Duration
	}{{"day", 24 * time.Hour}, {"hour", time.Hour}, {"minute", time.Minute}, {"second", time.Second}}
	var parts []string
	for _, u := range units {
		n := d / u.size
		if n == 0 {
			continue
		}
		d -= n * u.size
		s := fmt.Sprintf("%d %s", n, u.name)
		if n != 1 {
			s += "s"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}
