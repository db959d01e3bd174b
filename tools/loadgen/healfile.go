package loadgen

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// A heal file shares heal times between a fault injector and a uslload
// client in another process: one Unix-nanosecond timestamp per line,
// appended by AppendHealMark and read back by ReadHealMarks. Both run on the
// same machine, so they share the clock.

// AppendHealMark appends t to the heal file at path, creating it.
func AppendHealMark(path string, t time.Time) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("heal file: %w", err)
	}
	_, werr := fmt.Fprintf(f, "%d\n", t.UnixNano())
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr != nil {
		return fmt.Errorf("heal file %s: %w", path, werr)
	}
	return nil
}

// ReadHealMarks reads the heal times in the file at path; a missing file
// has none.
func ReadHealMarks(path string) ([]time.Time, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("heal file: %w", err)
	}
	defer f.Close()
	var out []time.Time
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			continue
		}
		ns, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("heal file %s:%d: %w", path, line, err)
		}
		out = append(out, time.Unix(0, ns))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("heal file %s: %w", path, err)
	}
	return out, nil
}
