// P1's goals judged over the rounds of several runs of edge.mjs. On one VM the same build's median
// moved from met to missed between two 12-round runs of the same day (BENCHMARKS.md, P1, 2026-12-07),
// so a verdict that holds needs more rounds than one run gives. Each argument names a build and the
// runs' rounds that measured it: a summary edge.mjs wrote (EDGE_BENCH_JSON) and the worker in it.
//
//   node bench/workerd/pool.mjs after=run1.json:keygate,run2.json:keygate before=run1.json:keygate-compare
//
// For each build: the median, over every judged round of the runs named (a round in which the host stole
// more than EDGE_BENCH_MAX_STEAL was not judged and is not in the summary's rounds), of the round's
// ratios against the pass-through of that round, with the quartiles, and the goals' verdict on those
// medians. Prints a Markdown table.

import { readFileSync } from "node:fs";

const GOALS = { throughput_ratio: [0.8, ">="], mean_ms_added: [0.5, "<="], p99_ratio: [1.25, "<="] };

function main(args) {
  if (!args.length) throw new Error("usage: pool.mjs <build>=<summary.json>:<worker>[,...] ...");
  const lines = [
    "| build | runs | rounds | throughput (≥ 0.8×) | mean latency (≤ +0.5 ms) | p99 (≤ 1.25×) | |",
    "|---|---|---|---|---|---|---|",
  ];
  for (const arg of args) {
    const [build, sources] = arg.split("=");
    if (!build || !sources) throw new Error(`not <build>=<summary.json>:<worker>[,...]: ${arg}`);
    const rounds = sources.split(",").flatMap((source) => {
      const at = source.lastIndexOf(":");
      const [file, worker] = [source.slice(0, at), source.slice(at + 1)];
      const measured = JSON.parse(readFileSync(file, "utf8")).p1?.[worker];
      if (!measured) throw new Error(`${file} has no P1 figures for ${worker}`);
      return measured.rounds;
    });
    if (!rounds.length) throw new Error(`${build}: no judged rounds`);
    const cells = Object.entries(GOALS).map(([figure, [goal, way]]) => {
      const values = rounds.map((r) => r[figure]).filter(Number.isFinite);
      const [low, mid, high] = [0.25, 0.5, 0.75].map((q) => quantile(values, q));
      const met = way === ">=" ? mid >= goal : mid <= goal;
      return { text: `${fmt(figure, mid)} (quartiles ${fmt(figure, low)}–${fmt(figure, high)})`, met };
    });
    const verdict = cells.every((c) => c.met) ? "met" : "**missed**";
    lines.push(`| ${build} | ${sources.split(",").length} | ${rounds.length} | ${cells.map((c) => c.text).join(" | ")} | ${verdict} |`);
  }
  console.log(lines.join("\n"));
}

function fmt(figure, value) {
  return figure === "mean_ms_added" ? `${value >= 0 ? "+" : ""}${value.toFixed(2)} ms` : `${value.toFixed(3)}×`;
}

// The q-quantile by linear interpolation between the sorted values.
function quantile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (sorted.length - 1) * q;
  const below = Math.floor(at);
  return sorted[below] + (sorted[Math.min(below + 1, sorted.length - 1)] - sorted[below]) * (at - below);
}

try {
  main(process.argv.slice(2));
} catch (error) {
  console.error(`pool: ${error.message}`);
  process.exitCode = 1;
}
