package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/BurntSushi/toml"
	"github.com/alecthomas/kong"
)

// loadConfig reads a --config file. TOML is the documented format; since TOML
// is not a superset of JSON, a file that starts with '{' is read as JSON.
// Keys are flag names with '-' or '_' (session_timeout = "30s"), and
// command-line flags win over the file.
func loadConfig(r io.Reader) (kong.Resolver, error) {
	b, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		return kong.JSON(bytes.NewReader(b))
	}
	var values map[string]any
	if _, err := toml.Decode(string(b), &values); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	// [[peer]] sections are the hub's peer table (peers.go reads them), not
	// values of the --peer flag.
	if _, ok := values["peer"].([]map[string]any); ok {
		delete(values, "peer")
	}
	// kong's JSON resolver already knows how to match keys to flags and hand
	// values to the flags' own parsers; re-encoding reuses it exactly.
	j, err := json.Marshal(values)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return kong.JSON(bytes.NewReader(j))
}
