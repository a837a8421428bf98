package report

import (
	"fmt"
	"math"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// writeCharts draws the PNG charts into dir: ns per packet by path and
// mode (kernel-path.png), and QPS and p99 by connections with a line per
// mode (e2e-qps.png, e2e-p99.png). Each point is the median over rounds.
func writeCharts(res *Results, dir string) error {
	if err := kernelChart(res, filepath.Join(dir, "kernel-path.png")); err != nil {
		return err
	}
	if err := e2eChart(res, filepath.Join(dir, "e2e-qps.png"), "Max QPS by connections (median over rounds)", "requests per second",
		func(r Run) *float64 { return r.QPS }); err != nil {
		return err
	}
	return e2eChart(res, filepath.Join(dir, "e2e-p99.png"), "p99 latency at max QPS by connections (median)", "p99 (µs)",
		func(r Run) *float64 { return r.P99us })
}

// modesWith returns the modes of res.Config that have runs of workload.
func modesWith(res *Results, workload string) []string {
	var out []string
	for _, m := range res.Config.Modes {
		for _, r := range res.Runs {
			if r.Mode == m && r.Workload == workload {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

func kernelChart(res *Results, file string) error {
	p := plot.New()
	p.Title.Text = "Kernel path: ns per packet (median over rounds; lower is better)"
	p.Y.Label.Text = "ns per packet"
	modes := modesWith(res, WorkloadKernel)
	if len(modes) == 0 {
		return nil
	}
	w := vg.Points(130 / float64(len(modes)))
	top := 0.0
	for i, m := range modes {
		vals := make(plotter.Values, len(KernelPaths))
		for j, path := range KernelPaths {
			v, n := medianOf(res.Runs, m, WorkloadKernel, path, 0, func(r Run) *float64 { return r.NsPerPacket })
			if n == 0 || math.IsNaN(v) {
				v = 0 // not measured for this mode
			}
			vals[j] = v
			top = math.Max(top, v)
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return fmt.Errorf("chart %s: %w", file, err)
		}
		bars.LineStyle.Width = 0
		bars.Color = plotutil.Color(i)
		bars.Offset = w * vg.Length(float64(i)-float64(len(modes)-1)/2)
		p.Add(bars)
		p.Legend.Add(m, bars)
	}
	p.Legend.Top = true
	p.Y.Min = 0
	p.Y.Max = top / 0.62 // room for the legend above the bars
	p.NominalX(KernelPaths...)
	if err := p.Save(10*vg.Inch, 5*vg.Inch, file); err != nil {
		return fmt.Errorf("save chart %s: %w", file, err)
	}
	return nil
}

func e2eChart(res *Results, file, title, ylabel string, field func(Run) *float64) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "connections (fortio -c)"
	p.Y.Label.Text = ylabel
	modes := modesWith(res, WorkloadE2E)
	if len(modes) == 0 {
		return nil
	}
	var ticks []plot.Tick
	for _, c := range res.Config.Connections {
		ticks = append(ticks, plot.Tick{Value: math.Log2(float64(c)), Label: fmt.Sprint(c)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	for i, m := range modes {
		var pts plotter.XYs
		for _, c := range res.Config.Connections {
			v, n := medianOf(res.Runs, m, WorkloadE2E, PathMaxQPS, c, field)
			if n > 0 && !math.IsNaN(v) {
				pts = append(pts, plotter.XY{X: math.Log2(float64(c)), Y: v})
			}
		}
		if len(pts) == 0 {
			continue
		}
		l, s, err := plotter.NewLinePoints(pts)
		if err != nil {
			return fmt.Errorf("chart %s: %w", file, err)
		}
		l.Color = plotutil.Color(i)
		l.Dashes = plotutil.Dashes(i % 3)
		s.Color = plotutil.Color(i)
		s.Shape = plotutil.Shape(i)
		p.Add(l, s)
		p.Legend.Add(m, l, s)
	}
	p.Legend.Top = true
	p.Legend.Left = true
	if err := p.Save(8*vg.Inch, 5*vg.Inch, file); err != nil {
		return fmt.Errorf("save chart %s: %w", file, err)
	}
	return nil
}
