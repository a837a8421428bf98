// Package report owns the benchmark's results and what is drawn from them.
//
// The results are bench/results/latest.json: [Results] and the types it
// holds, with the names of modes, workloads and paths that it records
// ([ReadResults], [WriteResults]), and the per-round ratios a run stores
// in it ([ComputeRatios]). The measuring program (bench/, package main)
// fills them and calls [Render] at the end of a run; [Render] draws the
// PNG charts and writes BENCHMARKS.md: the machine and its load, the
// goals and whether they were met, the tables, where the packets landed,
// what each mode ran and what the numbers mean.
//
// Everything here reads only the results, nothing of the machine, so the
// report can be drawn again without a run, after a change to its text:
//
//	make bench-report    # go run ./bench -render bench/results/latest.json
//
// and a test checks that the committed BENCHMARKS.md is what this package
// draws from the committed latest.json.
package report
