package main

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Mode names, also the table's column order.
const (
	modeDirect = "direct"
	modeWG     = "wireguard-go"
	modeUSL    = "usltun"
)

// ModeResult is everything measured for one mode; a nil part did not run.
type ModeResult struct {
	Mode     string      `json:"mode"`
	Single   *Throughput `json:"throughput_1"`
	Multi    *Throughput `json:"throughput_4"`
	RR       *RR         `json:"rr"`
	Connect  *Connect    `json:"connect"`
	Idle     *Idle       `json:"idle"`
	Recovery *Recovery   `json:"recovery"`
	Errors   []string    `json:"errors,omitempty"`
}

// Results is one benchmark run.
type Results struct {
	Command string    `json:"command"`
	Start   time.Time `json:"start"`
	Elapsed string    `json:"elapsed"`
	Kernel  string    `json:"kernel"`
	CPUs    int       `json:"cpus"`
	Usltun  string    `json:"usltun_version,omitempty"`
	// Commit is `git describe --always --dirty` of the tree the usltun
	// binary was built from (empty with --usltun).
	Commit string `json:"commit,omitempty"`
	// LoadAvg is /proc/loadavg at the start and at the end: other work on
	// the machine shares its cores with the benchmark.
	LoadAvg [2]string `json:"loadavg"`
	// ABConnect is connect() from A to B directly: one A—B round trip plus
	// the kernel's connect cost, the allowance of the connect target.
	ABConnect *Connect      `json:"ab_connect,omitempty"`
	Modes     []*ModeResult `json:"modes"`
}

func (r *Results) mode(name string) *ModeResult {
	for _, m := range r.Modes {
		if m.Mode == name {
			return m
		}
	}
	return nil
}

// row is one line of the comparison table. vals holds direct, wireguard-go
// and usltun in that order; NaN means not measured.
type row struct {
	figure string
	vals   [3]float64
	format string // for the values, e.g. "%.2f"
	// ratios: compare usltun with direct and wireguard-go in this row.
	ratios bool
	target string
	met    string // "yes", "no", or "" when there is no verdict
}

var nan = math.NaN()

// get applies f to a mode's result, NaN when the mode or part is missing.
func (r *Results) get(name string, f func(*ModeResult) (float64, bool)) float64 {
	m := r.mode(name)
	if m == nil {
		return nan
	}
	v, ok := f(m)
	if !ok {
		return nan
	}
	return v
}

func (r *Results) triple(f func(*ModeResult) (float64, bool)) [3]float64 {
	return [3]float64{r.get(modeDirect, f), r.get(modeWG, f), r.get(modeUSL, f)}
}

func verdict(ok bool, known bool) string {
	switch {
	case !known:
		return ""
	case ok:
		return "yes"
	default:
		return "no"
	}
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// rows builds the table from the results, with the targets.
func (r *Results) rows() []row {
	var out []row
	tp := func(multi bool) func(*ModeResult) (float64, bool) {
		return func(m *ModeResult) (float64, bool) {
			t := m.Single
			if multi {
				t = m.Multi
			}
			return gbps(t)
		}
	}
	single := r.triple(tp(false))
	out = append(out, row{
		figure: "TCP throughput A→C, 1 stream (Gbit/s)", vals: single, format: "%.2f", ratios: true,
		target: "≥ 0.25× direct and ≥ 5× wireguard-go (stretch 0.5× direct)",
		met: verdict(single[2] >= 0.25*single[0] && (math.IsNaN(single[1]) || single[2] >= 5*single[1]),
			!math.IsNaN(single[2]) && !math.IsNaN(single[0])),
	})
	multi := r.triple(tp(true))
	out = append(out, row{
		figure: "TCP throughput A→C, 4 streams (Gbit/s)", vals: multi, format: "%.2f", ratios: true,
		target: "≥ 0.25× direct",
		met:    verdict(multi[2] >= 0.25*multi[0], !math.IsNaN(multi[2]) && !math.IsNaN(multi[0])),
	})
	for _, multi := range []bool{false, true} {
		n := 1
		if multi {
			n = 4
		}
		cpu := r.triple(func(m *ModeResult) (float64, bool) {
			t := m.Single
			if multi {
				t = m.Multi
			}
			if t == nil || t.DaemonCores == 0 {
				return 0, false
			}
			return t.CoresPerGbps, true
		})
		out = append(out, row{
			figure: fmt.Sprintf("daemon CPU per Gbit/s, %d stream%s (cores, both daemons)", n, plural(n)),
			vals:   cpu, format: "%.3f", ratios: true,
			target: "≤ 0.5 cores",
			met:    verdict(cpu[2] <= 0.5, !math.IsNaN(cpu[2])),
		})
	}
	for _, p := range []struct {
		name   string
		factor float64
		get    func(*RR) time.Duration
	}{{"p50", 5, func(x *RR) time.Duration { return x.P50 }}, {"p99", 7, func(x *RR) time.Duration { return x.P99 }}} {
		v := r.triple(func(m *ModeResult) (float64, bool) {
			if m.RR == nil {
				return 0, false
			}
			return us(p.get(m.RR)), true
		})
		out = append(out, row{
			figure: "request/response 64 B, " + p.name + " (µs)", vals: v, format: "%.0f", ratios: true,
			target: fmt.Sprintf("≤ %.0f× direct", p.factor),
			met:    verdict(v[2] <= p.factor*v[0], !math.IsNaN(v[2]) && !math.IsNaN(v[0])),
		})
	}
	conn := r.triple(func(m *ModeResult) (float64, bool) {
		if m.Connect == nil {
			return 0, false
		}
		return us(m.Connect.P50), true
	})
	connRow := row{figure: "connect() p50 (µs)", vals: conn, format: "%.0f", ratios: true,
		target: "≤ direct + one A—B round trip"}
	if r.ABConnect != nil && !math.IsNaN(conn[0]) {
		limit := conn[0] + us(r.ABConnect.P50)
		connRow.target = fmt.Sprintf("≤ direct + one A—B round trip (%.0f µs)", limit)
		connRow.met = verdict(conn[2] <= limit, !math.IsNaN(conn[2]))
	}
	out = append(out, connRow)
	connP99 := r.triple(func(m *ModeResult) (float64, bool) {
		if m.Connect == nil {
			return 0, false
		}
		return us(m.Connect.P99), true
	})
	out = append(out, row{figure: "connect() p99 (µs)", vals: connP99, format: "%.0f", ratios: true, target: "(none)"})
	for _, lv := range r.idleLevels() {
		v := r.triple(func(m *ModeResult) (float64, bool) {
			if m.Idle == nil {
				return 0, false
			}
			for _, l := range m.Idle.Levels {
				if l.Flows == lv {
					return float64(l.RSSTotal) / (1 << 20), true
				}
			}
			return 0, false
		})
		// The issue sets targets at exactly these two levels.
		r := row{figure: fmt.Sprintf("RSS with %d idle flows (MiB, both daemons)", lv), vals: v, format: "%.0f",
			target: "(targets at 1000 and 10000 flows)"}
		if limit, ok := map[int]float64{1000: 200, 10000: 1024}[lv]; ok {
			r.target = fmt.Sprintf("≤ %.0f MiB", limit)
			r.met = verdict(v[2] <= limit, !math.IsNaN(v[2]))
		}
		out = append(out, r)
	}
	rec := r.triple(func(m *ModeResult) (float64, bool) {
		if m.Recovery == nil {
			return 0, false
		}
		if m.Recovery.Delay < 0 {
			return math.Inf(1), true
		}
		return m.Recovery.Delay.Seconds(), true
	})
	bh := "blackhole"
	if m := r.mode(modeUSL); m != nil && m.Recovery != nil {
		bh = fmt.Sprintf("%v blackhole", m.Recovery.Blackhole)
	} else if m := r.mode(modeWG); m != nil && m.Recovery != nil {
		bh = fmt.Sprintf("%v blackhole", m.Recovery.Blackhole)
	}
	out = append(out, row{
		figure: "heal of a " + bh + " → first new byte at C (s)", vals: rec, format: "%.2f", ratios: true,
		target: "≤ 1.2 s (wireguard-go: 16–38 s)",
		met:    verdict(rec[2] <= 1.2, !math.IsNaN(rec[2])),
	})
	return out
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func gbps(t *Throughput) (float64, bool) {
	if t == nil {
		return 0, false
	}
	return t.Gbps, true
}

// idleLevels lists the idle-flow counts measured by any mode, ascending.
func (r *Results) idleLevels() []int {
	seen := map[int]bool{}
	var out []int
	for _, m := range r.Modes {
		if m.Idle == nil {
			continue
		}
		for _, l := range m.Idle.Levels {
			if !seen[l.Flows] {
				seen[l.Flows] = true
				out = append(out, l.Flows)
			}
		}
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// renderTable renders rows as a markdown table, leaving out rows with
// no figure at all.
func renderTable(rows []row) string {
	var b strings.Builder
	b.WriteString("| figure | direct | wireguard-go | usltun | usltun ÷ direct | usltun ÷ wireguard-go | target | met |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |\n")
	for _, r := range rows {
		if math.IsNaN(r.vals[0]) && math.IsNaN(r.vals[1]) && math.IsNaN(r.vals[2]) {
			continue // a part that did not run (--only)
		}
		cells := []string{r.figure}
		for _, v := range r.vals {
			cells = append(cells, formatVal(r.format, v))
		}
		if r.ratios {
			cells = append(cells, ratio(r.vals[2], r.vals[0]), ratio(r.vals[2], r.vals[1]))
		} else {
			cells = append(cells, "", "")
		}
		cells = append(cells, r.target, r.met)
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	return b.String()
}

func formatVal(format string, v float64) string {
	switch {
	case math.IsNaN(v):
		return "–"
	case math.IsInf(v, 1):
		return "none"
	}
	return fmt.Sprintf(format, v)
}

func ratio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || math.IsInf(a, 0) || math.IsInf(b, 0) || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}
