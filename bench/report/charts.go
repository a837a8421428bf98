package report

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// modeColors gives every mode one colour in every chart: d3's category10,
// ten hues a reader tells apart, the rules in warm colours, meshredirect's
// in cool ones, the references in grey and brown.
var modeColors = map[string]color.RGBA{
	ModeEBPFInpod:      {0x1f, 0x77, 0xb4, 0xff}, // blue
	ModeIptablesInpod:  {0xff, 0x7f, 0x0e, 0xff}, // orange
	ModeNftablesInpod:  {0xbc, 0xbd, 0x22, 0xff}, // olive
	ModeIptablesNode:   {0xd6, 0x27, 0x28, 0xff}, // red
	ModeEBPFTCX:        {0x2c, 0xa0, 0x2c, 0xff}, // green
	ModeEBPFTC:         {0x17, 0xbe, 0xcf, 0xff}, // cyan
	ModeEBPFTCXRedir:   {0x94, 0x67, 0xbd, 0xff}, // purple
	ModeEBPFTCRedirect: {0xe3, 0x77, 0xc2, 0xff}, // pink
	ModeDirect:         {0x7f, 0x7f, 0x7f, 0xff}, // grey
	ModeExplicit:       {0x8c, 0x56, 0x4b, 0xff}, // brown
}

func modeColor(m string) color.Color {
	if c, ok := modeColors[m]; ok {
		return c
	}
	return color.Black
}

// modesWith returns the modes of res.Config that have runs of workload.
func modesWith(res *Results, workload string) []string {
	r := &reporter{res: res}
	var out []string
	for _, m := range r.allModes() {
		if r.ranWorkload(m, workload) {
			out = append(out, m)
		}
	}
	return out
}

// writeCharts draws the PNG charts into dir, one per question the report
// answers: the kernel path per request of each comparison
// (kernel-request-{node,inpod}.png), per hop (kernel-hop-<family>-<segment>.png),
// QPS and CPU per request against each comparison's rules by concurrency
// (e2e-{qps,cpu}-{node,inpod}.png), new connections per second
// (connect.png), fixed-rate latency percentiles (latency.png), IPv6's
// ratios over IPv4's (family.png). Every y axis starts at 0, every bar and
// point carries the min–max over rounds. A chart without data is not
// drawn, and the report does not link it.
func writeCharts(res *Results, dir string) error {
	r := &reporter{res: res}
	for _, ch := range r.chartList() {
		if !ch.hasData() {
			continue
		}
		if err := ch.save(filepath.Join(dir, ch.file)); err != nil {
			return err
		}
	}
	return nil
}

// chart is one chart: grouped bars or lines.
type chart struct {
	file, title, ylabel string
	bars                *groupedBars
	lines               []*errLine
	xticks              []plot.Tick
	// refs are horizontal reference lines (1.0: the baseline; goals).
	refs []float64
}

func (ch *chart) hasData() bool {
	if ch.bars != nil {
		return ch.bars.hasData()
	}
	return len(ch.lines) > 0
}

// charts are the report's charts, drawn or not.
func (r *reporter) chartList() []*chart {
	var out []*chart
	for _, c := range r.comparisons() {
		out = append(out, r.kernelRequestChart(c))
	}
	for _, k := range r.kernelCases() {
		out = append(out, r.kernelHopChart(k))
	}
	for _, c := range r.comparisons() {
		out = append(out, r.e2eRatioChart(c, "qps"), r.e2eRatioChart(c, "cpu"))
	}
	out = append(out, r.connectChart(), r.latencyChart(), r.familyChart())
	return out
}

// chartLinks writes the images of the charts drawn of those named
// (file, alt text), on one line; nothing if none is drawn.
func (r *reporter) chartLinks(fileAlt ...string) {
	drawn := map[string]bool{}
	for _, ch := range r.chartList() {
		drawn[ch.file] = ch.hasData()
	}
	var links []string
	for i := 0; i+1 < len(fileAlt); i += 2 {
		if drawn[fileAlt[i]] {
			links = append(links, fmt.Sprintf("![%s](%s/%s)", fileAlt[i+1], r.charts, fileAlt[i]))
		}
	}
	if len(links) > 0 {
		r.p("%s", strings.Join(links, " "))
		r.p("")
	}
}

func (r *reporter) kernelRequestChart(c comparison) *chart {
	cases := r.kernelCases()
	b := newGroupedBars()
	for _, k := range cases {
		b.groups = append(b.groups, k.String())
	}
	for _, m := range c.modes {
		for gi, k := range cases {
			b.set(gi, m, statOfRounds(r.requestTotals(m, k.family, k.segment)))
		}
	}
	return &chart{file: "kernel-request-" + c.slug + ".png", bars: b, ylabel: "ns per request",
		title: c.name + ": kernel path per request, sum of its hops (median, min–max; lower is better)"}
}

func (r *reporter) kernelHopChart(k kernelCase) *chart {
	b := newGroupedBars()
	b.groups = KernelPaths
	for _, m := range r.kernelModes() {
		for gi, h := range KernelPaths {
			b.set(gi, m, r.median(m, kernelSel(h, k.family, k.segment), nsField))
		}
	}
	return &chart{file: "kernel-hop-" + k.slug() + ".png", bars: b, ylabel: "ns per packet",
		title: "Kernel path per hop, " + k.String() + " (median, min–max; lower is better)"}
}

// e2eRatioChart: each mode of c against c's main rules, by concurrency,
// QPS or CPU per request; IPv6 dashed.
func (r *reporter) e2eRatioChart(c comparison, what string) *chart {
	base := c.baselines[0]
	field, ylabel, title := qpsField, "QPS ratio", "QPS against `"+base+"` (higher is better)"
	goal := 1.0
	if c.slug == "inpod" {
		goal = 1.2
	}
	if what == "cpu" {
		field, ylabel, title = cpuField, "CPU per request ratio", "CPU per request against `"+base+"` (lower is better)"
		if c.slug == "inpod" {
			goal = 0.8
		}
	}
	ch := &chart{file: "e2e-" + what + "-" + c.slug + ".png", ylabel: ylabel,
		title: fmt.Sprintf("%s: %s, median of per-round ratios, min–max (dotted: 1 and the goal %.1f)", c.name, strings.ReplaceAll(title, "`", ""), goal),
		refs:  []float64{1, goal}}
	for _, n := range r.concurrencies() {
		ch.xticks = append(ch.xticks, plot.Tick{Value: math.Log2(float64(n)), Label: fmt.Sprint(n)})
	}
	for _, m := range c.modes {
		if m == base {
			continue
		}
		for _, fam := range r.families() {
			l := &errLine{mode: m, dashed: fam == FamilyIPv6, label: m + " " + fam}
			for _, n := range r.concurrencies() {
				if s := r.ratio(m, base, e2eSel(PathMaxQPS, fam, n), field); s.ok() {
					l.pts = append(l.pts, errPoint{math.Log2(float64(n)), s})
				}
			}
			if len(l.pts) > 0 {
				ch.lines = append(ch.lines, l)
			}
		}
	}
	return ch
}

func (r *reporter) connectChart() *chart {
	b := newGroupedBars()
	type g struct {
		path, fam string
		n         int
	}
	var groups []g
	for _, path := range r.workloadPaths(WorkloadConnect) {
		for _, fam := range r.families() {
			for _, n := range r.workloadConns(WorkloadConnect, path) {
				groups = append(groups, g{path, fam, n})
				b.groups = append(b.groups, fmt.Sprintf("%s c=%d", fam, n))
			}
		}
	}
	for _, m := range modesWith(r.res, WorkloadConnect) {
		for gi, x := range groups {
			b.set(gi, m, r.median(m, sel{workload: WorkloadConnect, path: x.path, family: x.fam, conns: x.n}, qpsField))
		}
	}
	return &chart{file: "connect.png", bars: b, ylabel: "new connections per second",
		title: "New connections per second, one request each (median, min–max; higher is better)"}
}

func (r *reporter) latencyChart() *chart {
	b := newGroupedBars()
	pcts := []struct {
		name  string
		field func(Run) *float64
	}{{"p50", p50Field}, {"p90", p90Field}, {"p99", p99Field}, {"p99.9", p999Field}}
	type g struct {
		fam   string
		field func(Run) *float64
	}
	var groups []g
	for _, fam := range r.families() {
		for _, p := range pcts {
			groups = append(groups, g{fam, p.field})
			b.groups = append(b.groups, fam+" "+p.name)
		}
	}
	for _, m := range r.allModes() {
		for gi, x := range groups {
			b.set(gi, m, r.median(m, e2eSel(PathFixedQPS, x.fam, r.res.Config.FixedQPSConns), x.field))
		}
	}
	return &chart{file: "latency.png", bars: b, ylabel: "µs",
		title: fmt.Sprintf("Latency at %.0f QPS, %d connections (median, min–max; lower is better)", r.res.Config.FixedQPS, r.res.Config.FixedQPSConns)}
}

// familyChart: IPv6's ratio over IPv4's for meshredirect's mode of each
// comparison against its main rules.
func (r *reporter) familyChart() *chart {
	b := newGroupedBars()
	ch := &chart{file: "family.png", bars: b, ylabel: "IPv6 ratio / IPv4 ratio", refs: []float64{0.9, 1, 1.1},
		title: "IPv6 against IPv4: each ratio against the comparison's rules, IPv6's over IPv4's (min–max; goal 0.90–1.10, dotted)"}
	if !r.hasFamily(FamilyIPv6) {
		return ch
	}
	index := map[string]int{}
	for _, c := range r.comparisons() {
		if !r.has(c.subject) || !r.has(c.baselines[0]) {
			continue
		}
		for _, m := range r.familyMeasures(c.subject, c.baselines[0]) {
			q, lo, hi, ok := familyQuotient(m.ratio(FamilyIPv4), m.ratio(FamilyIPv6))
			if !ok {
				continue
			}
			gi, seen := index[m.name]
			if !seen {
				gi = len(b.groups)
				index[m.name] = gi
				b.groups = append(b.groups, m.short)
			}
			b.set(gi, c.subject, stat{med: q, lo: lo, hi: hi, n: 1})
		}
	}
	return ch
}

// save draws ch with its legend to the right of the plot.
func (ch *chart) save(file string) error {
	p := plot.New()
	p.Title.Text = ch.title
	p.Y.Label.Text = ch.ylabel
	var entries []legendEntry
	top := 0.0
	if ch.bars != nil {
		p.Add(ch.bars)
		p.NominalX(ch.bars.groups...)
		for _, m := range ch.bars.modes {
			entries = append(entries, legendEntry{m, swatch{modeColor(m), false, true}})
		}
		_, _, _, top = ch.bars.DataRange()
	} else {
		p.X.Label.Text = "connections"
		p.X.Tick.Marker = plot.ConstantTicks(ch.xticks)
		for i, l := range ch.lines {
			l.shift = vg.Points(4 * (float64(i) - float64(len(ch.lines)-1)/2))
			p.Add(l)
			entries = append(entries, legendEntry{l.label, swatch{modeColor(l.mode), l.dashed, false}})
			_, _, _, hi := l.DataRange()
			top = math.Max(top, hi)
		}
		if len(ch.xticks) > 0 {
			p.X.Min, p.X.Max = ch.xticks[0].Value-0.3, ch.xticks[len(ch.xticks)-1].Value+0.3
		}
	}
	for _, y := range ch.refs {
		top = math.Max(top, y)
	}
	// Every axis from 0: no bar or ratio looks bigger than it is.
	p.Y.Min, p.Y.Max = 0, top*1.08
	if p.Y.Max == 0 {
		p.Y.Max = 1
	}
	for _, y := range ch.refs {
		p.Add(hline{y})
	}
	const w, h = 11 * vg.Inch, 5 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	split := dc.Min.X + (dc.Max.X-dc.Min.X)*0.78
	p.Draw(draw.Canvas{Canvas: dc.Canvas, Rectangle: vg.Rectangle{Min: dc.Min, Max: vg.Point{X: split, Y: dc.Max.Y}}})
	leg := plot.NewLegend()
	leg.Top, leg.Left = true, true
	leg.Padding = vg.Points(2)
	for _, e := range entries {
		leg.Add(e.name, e.thumb)
	}
	leg.Draw(draw.Canvas{Canvas: dc.Canvas, Rectangle: vg.Rectangle{Min: vg.Point{X: split + vg.Points(8), Y: dc.Min.Y}, Max: vg.Point{X: dc.Max.X, Y: dc.Max.Y - vg.Points(24)}}})
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return fmt.Errorf("draw chart %s: %w", file, err)
	}
	if err := writeFileAtomic(file, buf.Bytes()); err != nil {
		return fmt.Errorf("save chart %s: %w", file, err)
	}
	return nil
}

type legendEntry struct {
	name  string
	thumb swatch
}

// swatch is a legend entry's thumbnail: a filled box for bars, a line
// (dashed for IPv6) for lines.
type swatch struct {
	c           color.Color
	dashed, box bool
}

func (s swatch) Thumbnail(c *draw.Canvas) {
	if s.box {
		c.FillPolygon(s.c, []vg.Point{c.Min, {X: c.Max.X, Y: c.Min.Y}, c.Max, {X: c.Min.X, Y: c.Max.Y}})
		return
	}
	y := (c.Min.Y + c.Max.Y) / 2
	c.StrokeLine2(lineStyle(s.c, s.dashed), c.Min.X, y, c.Max.X, y)
}

func lineStyle(c color.Color, dashed bool) draw.LineStyle {
	sty := draw.LineStyle{Color: c, Width: vg.Points(1.5)}
	if dashed {
		sty.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
	}
	return sty
}

// groupedBars draws, in each group along x, a bar per mode in the mode's
// colour from 0 to the median, with a min–max error bar.
type groupedBars struct {
	groups []string
	modes  []string
	vals   map[string]map[int]stat
}

func newGroupedBars() *groupedBars { return &groupedBars{vals: map[string]map[int]stat{}} }

// set records mode's figure in group gi, if measured.
func (b *groupedBars) set(gi int, mode string, s stat) {
	if !s.ok() {
		return
	}
	if b.vals[mode] == nil {
		b.vals[mode] = map[int]stat{}
		b.modes = append(b.modes, mode)
	}
	b.vals[mode][gi] = s
}

func (b *groupedBars) hasData() bool { return len(b.modes) > 0 && len(b.groups) > 0 }

func (b *groupedBars) DataRange() (xmin, xmax, ymin, ymax float64) {
	for _, vs := range b.vals {
		for _, s := range vs {
			ymax = math.Max(ymax, math.Max(s.hi, s.med))
		}
	}
	return -0.5, float64(len(b.groups)) - 0.5, 0, ymax
}

func (b *groupedBars) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	slot := 0.8 / float64(len(b.modes))
	errSty := draw.LineStyle{Color: color.Black, Width: vg.Points(1)}
	for i, m := range b.modes {
		for gi, s := range b.vals[m] {
			x0 := float64(gi) - 0.4 + float64(i)*slot
			x1 := x0 + slot*0.9
			c.FillPolygon(modeColor(m), c.ClipPolygonY([]vg.Point{
				{X: trX(x0), Y: trY(0)}, {X: trX(x1), Y: trY(0)}, {X: trX(x1), Y: trY(s.med)}, {X: trX(x0), Y: trY(s.med)}}))
			xm, cap := trX((x0+x1)/2), (trX(x1)-trX(x0))/4
			c.StrokeLine2(errSty, xm, trY(s.lo), xm, trY(s.hi))
			c.StrokeLine2(errSty, xm-cap, trY(s.lo), xm+cap, trY(s.lo))
			c.StrokeLine2(errSty, xm-cap, trY(s.hi), xm+cap, trY(s.hi))
		}
	}
}

// errPoint is a median with its min–max at x.
type errPoint struct {
	x float64
	s stat
}

// errLine joins a mode's points, each with its min–max error bar.
type errLine struct {
	mode, label string
	dashed      bool
	pts         []errPoint
	// shift moves the error bars sideways, so that lines' spreads at the
	// same x do not hide each other.
	shift vg.Length
}

func (l *errLine) DataRange() (xmin, xmax, ymin, ymax float64) {
	xmin, xmax = math.Inf(1), math.Inf(-1)
	for _, pt := range l.pts {
		xmin, xmax = math.Min(xmin, pt.x), math.Max(xmax, pt.x)
		ymax = math.Max(ymax, pt.s.hi)
	}
	return xmin, xmax, 0, ymax
}

func (l *errLine) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	var line []vg.Point
	for _, pt := range l.pts {
		line = append(line, vg.Point{X: trX(pt.x), Y: trY(pt.s.med)})
	}
	col := modeColor(l.mode)
	c.StrokeLines(lineStyle(col, l.dashed), c.ClipLinesXY(line)...)
	errSty := draw.LineStyle{Color: col, Width: vg.Points(1)}
	for _, pt := range l.pts {
		x := trX(pt.x) + l.shift
		c.StrokeLine2(errSty, x, trY(pt.s.lo), x, trY(pt.s.hi))
		c.StrokeLine2(errSty, x-vg.Points(3), trY(pt.s.lo), x+vg.Points(3), trY(pt.s.lo))
		c.StrokeLine2(errSty, x-vg.Points(3), trY(pt.s.hi), x+vg.Points(3), trY(pt.s.hi))
		c.DrawGlyph(draw.GlyphStyle{Color: col, Radius: vg.Points(2.5), Shape: draw.CircleGlyph{}}, vg.Point{X: trX(pt.x), Y: trY(pt.s.med)})
	}
}

// hline is a horizontal reference line across the plot.
type hline struct{ y float64 }

func (h hline) Plot(c draw.Canvas, p *plot.Plot) {
	_, trY := p.Transforms(&c)
	c.StrokeLine2(draw.LineStyle{Color: color.Gray{Y: 0x60}, Width: vg.Points(0.8), Dashes: []vg.Length{vg.Points(2), vg.Points(2)}},
		c.Min.X, trY(h.y), c.Max.X, trY(h.y))
}
