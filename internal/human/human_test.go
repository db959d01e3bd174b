package human

import (
	"testing"
	"time"
)

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 999: "999 B", 1000: "1.0 KiB", 1536: "1.5 KiB", 5 << 20: "5.0 MiB",
		999 << 20: "999.0 MiB", 1000 << 20: "0.98 GiB", 3 << 30: "3.00 GiB", 2 << 40: "2.00 TiB", -1536: "-1.5 KiB",
	} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestRate(t *testing.T) {
	for r, want := range map[float64]string{0: "0 bit/s", 999: "999 bit/s", 47e3: "47 kbit/s", 785.4e6: "785 Mbit/s", 2.516e9: "2.52 Gbit/s"} {
		if got := Rate(r); got != want {
			t.Errorf("Rate(%v) = %q, want %q", r, got, want)
		}
	}
}

func TestAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0 seconds", 400 * time.Millisecond: "0 seconds", time.Second: "1 second",
		62 * time.Second: "1 minute, 2 seconds", 2*time.Hour + 5*time.Second: "2 hours, 5 seconds",
		49 * time.Hour: "2 days, 1 hour",
	} {
		if got := Age(d); got != want {
			t.Errorf("Age(%v) = %q, want %q", d, got, want)
		}
	}
}
