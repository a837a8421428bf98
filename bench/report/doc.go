// Package report owns the benchmark's results and what is drawn from them.
//
// The results are bench/results/latest.json: [Results] and the types it
// holds, with the names of modes, workloads and paths that it records
// ([ReadResults], [WriteResults]), and the per-round ratios a run stores
// in it ([ComputeRatios]). The measuring program (bench/, package main)
// fills them and calls [Render] at the end of a run; [Render] draws the
// PNG charts and writes BENCHMARKS.md: the machine and its load, the
// goals and whether they were met (goals.go), then two comparisons kept
// apart (compare.go): node mode against Istio's node-level rules, and
// in-pod mode against Istio's in-pod iptables and nftables rules. Each
// has the kernel path per request and per hop (kernel.go), end to end
// and what the kernel path accounts for of it (e2e.go), new connections
// per second, latency at a fixed rate, IPv4 against IPv6 (family.go);
// then the programs, where the packets landed, what each mode ran and
// what the numbers mean (notes.go). Every figure is a median over rounds
// with its min–max, every comparison a median of per-round ratios
// (select.go); what a run did not measure is said, not left out.
//
// Everything here reads only the results, nothing of the machine, so the
// report can be drawn again without a run, after a change to its text:
//
//	make bench-report    # go run ./bench -render bench/results/latest.json
//
// and a test checks that the committed BENCHMARKS.md is what this package
// draws from the committed latest.json.
package report
