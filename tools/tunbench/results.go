package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Mode names; the first four are also the table's column order.
const (
	modeDirect = "direct"
	modeWGOld  = "wireguard-go-2022"    // Debian's 0.0.20220316: the historical row
	modeWG     = "wireguard-go-current" // built at wgVersion: the baseline of the targets
	modeUSL    = "usltun"
	// modeMirror is usltun over two A—B paths with the mirror scheduler; it
	// runs only in the mirror part, against modeUSL.
	modeMirror = "usltun-mirror"
)

// tableModes are the table's value columns.
var tableModes = [4]string{modeDirect, modeWGOld, modeWG, modeUSL}

// ModeResult is everything measured for one mode; a nil part did not run.
type ModeResult struct {
	Mode     string      `json:"mode"`
	Single   *Throughput `json:"throughput_1"`
	Multi    *Throughput `json:"throughput_4"`
	RR       *RR         `json:"rr"`
	Sockperf *Sockperf   `json:"sockperf"`
	Connect  *Connect    `json:"connect"`
	Idle     *Idle       `json:"idle"`
	Recovery *Recovery   `json:"recovery"`
	Errors   []string    `json:"errors,omitempty"`
}

// Mirror is the mirror part: usltun's 1-stream throughput over one path
// and mirrored over two, runs alternating, medians of each.
type Mirror struct {
	One    Throughput `json:"one_path"`
	Two    Throughput `json:"two_paths_mirror"`
	Errors []string   `json:"errors,omitempty"`
}

// Results is one benchmark run.
type Results struct {
	Command string    `json:"command"`
	Start   time.Time `json:"start"`
	Elapsed string    `json:"elapsed"`
	Kernel  string    `json:"kernel"`
	CPUs    int       `json:"cpus"`
	Usltun  string    `json:"usltun_version,omitempty"`
	// WGVersions are the two wireguard-go builds' version lines.
	WGVersions map[string]string `json:"wireguard_go_versions,omitempty"`
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
	Mirror    *Mirror       `json:"mirror,omitempty"`
}

func (r *Results) mode(name string) *ModeResult {
	for _, m := range r.Modes {
		if m.Mode == name {
			return m
		}
	}
	return nil
}

// row is one line of the comparison table. vals holds the tableModes in
// that order; NaN means not measured.
type row struct {
	figure string
	vals   [4]float64
	format string // for the values, e.g. "%.2f"
	// ratios: compare usltun with direct and the current wireguard-go.
	ratios bool
	target string
	met    string // "yes", "no", or "" when there is no verdict
}

// Columns of row.vals.
const (
	colDirect = iota
	colWGOld
	colWG
	colUSL
)

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

func (r *Results) cols(f func(*ModeResult) (float64, bool)) [4]float64 {
	var v [4]float64
	for i, name := range tableModes {
		v[i] = r.get(name, f)
	}
	return v
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

func known(v ...float64) bool {
	for _, x := range v {
		if math.IsNaN(x) {
			return false
		}
	}
	return true
}

// Targets of issue 13, as ratios within one run.
const (
	targetSingleDirect = 0.25 // 1 stream ≥ 0.25× direct …
	targetSingleWG     = 1.5  // … and ≥ 1.5× the current wireguard-go
	targetMultiDirect  = 0.3  // 4 streams ≥ 0.3× direct …
	targetMultiWG      = 2.0  // … and ≥ 2× the current wireguard-go
	targetCPU          = 0.25 // cores per Gbit/s, both daemons
	targetSockP50      = 2.0  // × direct
	targetSockP99      = 2.5  // × direct
	targetRRP50        = 8.0  // loadgen, × direct
	targetConnectRTTs  = 1.5  // connect p50 ≤ direct + 1.5 A—B round trips
	targetConnectP99   = 1000 // µs
	targetMirror       = 1.6  // mirror's CPU per Gbit/s ÷ one path's
)

// targetRSS is the RSS bound (MiB, both daemons) at the idle-flow levels
// the issue sets one for.
var targetRSS = map[int]float64{1000: 60, 10000: 400}

// rows builds the table from the results, with the targets.
func (r *Results) rows() []row {
	var out []row
	tput := func(multi bool) func(*ModeResult) (float64, bool) {
		return func(m *ModeResult) (float64, bool) {
			t := m.Single
			if multi {
				t = m.Multi
			}
			return gbps(t)
		}
	}
	single := r.cols(tput(false))
	out = append(out, row{
		figure: "TCP throughput A→C, 1 stream (Gbit/s)", vals: single, format: "%.2f", ratios: true,
		target: fmt.Sprintf("≥ %.2g× direct and ≥ %.2g× wireguard-go current", targetSingleDirect, targetSingleWG),
		met: verdict(single[colUSL] >= targetSingleDirect*single[colDirect] && single[colUSL] >= targetSingleWG*single[colWG],
			known(single[colUSL], single[colDirect], single[colWG])),
	})
	multi := r.cols(tput(true))
	out = append(out, row{
		figure: "TCP throughput A→C, 4 streams (Gbit/s)", vals: multi, format: "%.2f", ratios: true,
		target: fmt.Sprintf("≥ %.2g× direct and ≥ %.2g× wireguard-go current", targetMultiDirect, targetMultiWG),
		met: verdict(multi[colUSL] >= targetMultiDirect*multi[colDirect] && multi[colUSL] >= targetMultiWG*multi[colWG],
			known(multi[colUSL], multi[colDirect], multi[colWG])),
	})
	for _, multi := range []bool{false, true} {
		n := 1
		if multi {
			n = 4
		}
		cpu := r.cols(func(m *ModeResult) (float64, bool) {
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
			target: fmt.Sprintf("≤ %.2g cores", targetCPU),
			met:    verdict(cpu[colUSL] <= targetCPU, known(cpu[colUSL])),
		})
	}
	for _, p := range []struct {
		name   string
		factor float64
		get    func(*Sockperf) time.Duration
	}{{"p50", targetSockP50, func(x *Sockperf) time.Duration { return x.P50 }}, {"p99", targetSockP99, func(x *Sockperf) time.Duration { return x.P99 }}} {
		v := r.cols(func(m *ModeResult) (float64, bool) {
			if m.Sockperf == nil {
				return 0, false
			}
			return us(p.get(m.Sockperf)), true
		})
		out = append(out, row{
			figure: "sockperf TCP 64 B round trip, " + p.name + " (µs)", vals: v, format: "%.0f", ratios: true,
			target: fmt.Sprintf("≤ %.2g× direct", p.factor),
			met:    verdict(v[colUSL] <= p.factor*v[colDirect], known(v[colUSL], v[colDirect])),
		})
	}
	for _, p := range []struct {
		name   string
		factor float64 // 0: no target
		get    func(*RR) time.Duration
	}{{"p50", targetRRP50, func(x *RR) time.Duration { return x.P50 }}, {"p99", 0, func(x *RR) time.Duration { return x.P99 }}} {
		v := r.cols(func(m *ModeResult) (float64, bool) {
			if m.RR == nil {
				return 0, false
			}
			return us(p.get(m.RR)), true
		})
		rw := row{figure: "loadgen request/response 64 B, " + p.name + " (µs)", vals: v, format: "%.0f", ratios: true, target: "(none)"}
		if p.factor > 0 {
			rw.target = fmt.Sprintf("≤ %.2g× direct", p.factor)
			rw.met = verdict(v[colUSL] <= p.factor*v[colDirect], known(v[colUSL], v[colDirect]))
		}
		out = append(out, rw)
	}
	conn := r.cols(func(m *ModeResult) (float64, bool) {
		if m.Connect == nil {
			return 0, false
		}
		return us(m.Connect.P50), true
	})
	connRow := row{figure: "connect() p50 (µs)", vals: conn, format: "%.0f", ratios: true,
		target: fmt.Sprintf("≤ direct + %.2g A—B round trips", targetConnectRTTs)}
	if r.ABConnect != nil && known(conn[colDirect]) {
		limit := conn[colDirect] + targetConnectRTTs*us(r.ABConnect.P50)
		connRow.target = fmt.Sprintf("≤ direct + %.2g A—B round trips (%.0f µs)", targetConnectRTTs, limit)
		connRow.met = verdict(conn[colUSL] <= limit, known(conn[colUSL]))
	}
	out = append(out, connRow)
	connP99 := r.cols(func(m *ModeResult) (float64, bool) {
		if m.Connect == nil {
			return 0, false
		}
		return us(m.Connect.P99), true
	})
	out = append(out, row{figure: "connect() p99 (µs)", vals: connP99, format: "%.0f", ratios: true,
		target: fmt.Sprintf("≤ %d µs", targetConnectP99),
		met:    verdict(connP99[colUSL] <= targetConnectP99, known(connP99[colUSL]))})
	for _, lv := range r.idleLevels() {
		v := r.cols(func(m *ModeResult) (float64, bool) {
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
		rw := row{figure: fmt.Sprintf("RSS with %d idle flows (MiB, both daemons)", lv), vals: v, format: "%.0f",
			target: "(targets at 1000 and 10000 flows)"}
		if limit, ok := targetRSS[lv]; ok {
			rw.target = fmt.Sprintf("≤ %.0f MiB", limit)
			rw.met = verdict(v[colUSL] <= limit, known(v[colUSL]))
		}
		out = append(out, rw)
	}
	if mr := r.Mirror; mr != nil && mr.One.CoresPerGbps > 0 && mr.Two.CoresPerGbps > 0 {
		v := [4]float64{nan, nan, nan, mr.Two.CoresPerGbps / mr.One.CoresPerGbps}
		out = append(out, row{
			figure: fmt.Sprintf("mirror over 2 paths ÷ 1 path, CPU per Gbit/s, 1 stream (%.3f ÷ %.3f cores at %.2f and %.2f Gbit/s)",
				mr.Two.CoresPerGbps, mr.One.CoresPerGbps, mr.Two.Gbps, mr.One.Gbps),
			vals: v, format: "%.2f×",
			target: fmt.Sprintf("≤ %.2g×", targetMirror),
			met:    verdict(v[colUSL] <= targetMirror, true),
		})
	}
	rec := r.cols(func(m *ModeResult) (float64, bool) {
		if m.Recovery == nil {
			return 0, false
		}
		if m.Recovery.Delay < 0 {
			return math.Inf(1), true
		}
		return m.Recovery.Delay.Seconds(), true
	})
	bh := "blackhole"
	for _, name := range []string{modeUSL, modeWG, modeWGOld} {
		if m := r.mode(name); m != nil && m.Recovery != nil {
			bh = fmt.Sprintf("%v blackhole", m.Recovery.Blackhole)
			break
		}
	}
	out = append(out, row{
		figure: "heal of a " + bh + " → first new byte at C (s)", vals: rec, format: "%.2f", ratios: true,
		target: "≤ 1.2 s (wireguard-go: 16–38 s)",
		met:    verdict(rec[colUSL] <= 1.2, known(rec[colUSL])),
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
	b.WriteString("| figure | direct | wireguard-go 2022 | wireguard-go current | usltun | usltun ÷ direct | usltun ÷ wireguard-go current | target | met |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |\n")
	for _, r := range rows {
		if !slices.ContainsFunc(r.vals[:], func(v float64) bool { return !math.IsNaN(v) }) {
			continue // a part that did not run (--only)
		}
		cells := []string{r.figure}
		for _, v := range r.vals {
			cells = append(cells, formatVal(r.format, v))
		}
		if r.ratios {
			cells = append(cells, ratio(r.vals[colUSL], r.vals[colDirect]), ratio(r.vals[colUSL], r.vals[colWG]))
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
