// Live charts of a job's /metrics points, by kind: a toy run's lines, a sweep's band (min–max around the
// mean while it runs; median and 10–90% of the per-run traces once the result has them), a checkpoint
// job's loss / accuracy / sparsity per epoch.
import { LineChart, bandChart } from "./charts.js";
import { el } from "./format.js";

const TOY = [
  { title: "L_β (Lagrangian, log scale)", keys: [["lagrangian", "L_β"]], log: true },
  { title: "angles to w* (rad, log scale)", keys: [["theta_w", "θ(w, w*)"], ["theta_u", "θ(u, w*)"]], log: true },
  { title: "‖u‖₀ (non-zeros of u)", keys: [["nnz_u", "‖u‖₀"]] },
];
const SWEEP = [["lagrangian", "L_β"], ["theta_w", "θ(w, w*)"], ["theta_u", "θ(u, w*)"], ["nnz_u", "‖u‖₀"]];
const CHECKPOINT = [["loss", "loss per epoch"], ["accuracy", "accuracy per epoch"], ["sparsity", "sparsity per epoch"]];

/** Charts for `kind` ("toy", "sweep", "checkpoint") in `box`; add(points) appends /metrics points. */
export function liveCharts(box, kind, life) {
  const groups = new Map(); // sweep: group -> points (a sweep of differently shaped configs runs in groups)
  const points = [];
  let charts = null;
  const make = (specs) => specs.map((s) => {
    const chart = new LineChart(box, { title: s.title, series: s.keys.map(([, label]) => ({ label })),
      xLabel: kind === "checkpoint" ? "epoch" : "iteration", log: s.log });
    life.charts.push(chart);
    return { chart, keys: s.keys.map(([k]) => k) };
  });
  const column = (pts, key, pick = (v) => v) => pts.map((p) => (typeof p[key] === "number" || (p[key] && typeof p[key] === "object") ? pick(p[key]) : null));

  function draw() {
    if (kind === "sweep") {
      const last = Math.max(...groups.keys());
      const pts = groups.get(last) ?? [];
      charts ??= SWEEP.map(([key, label]) => {
        const chart = bandChart(box, { title: `${label}: mean, min–max over the runs`, centre: "mean", low: "min", high: "max" });
        life.charts.push(chart);
        return { chart, key };
      });
      for (const { chart, key } of charts) {
        chart.setData([pts.map((p) => p.iter), ...["mean", "min", "max"].map((s) => column(pts, key, (v) => v?.[s] ?? null))]);
      }
      return;
    }
    if (!charts) {
      if (kind !== "checkpoint") charts = make(TOY);
      else if (points.length) charts = make(checkpointSpecs(points[0]));
      else return;
    }
    for (const { chart, keys } of charts) chart.setData([points.map((p) => p.iter), ...keys.map((k) => column(points, k))]);
  }

  return {
    add(pts) {
      for (const p of pts) {
        if (kind === "sweep") {
          if (!groups.has(p.group ?? 0)) groups.set(p.group ?? 0, []);
          groups.get(p.group ?? 0).push(p);
        } else points.push(p);
      }
      if (pts.length || !charts) draw();
    },
    /** A finished sweep's per-run traces: replace the live bands with median and 10–90% quantiles. */
    quantiles(runs) {
      const traces = (runs || []).map((r) => r?.trace).filter((t) => t && Array.isArray(t.iter));
      if (!traces.length || !charts) return false;
      for (const c of charts) c.chart.destroy();
      box.replaceChildren();
      charts = SWEEP.map(([key, label]) => {
        const chart = bandChart(box, { title: `${label}: median, 10–90% over ${traces.length} runs`,
          centre: "median", low: "10%", high: "90%" });
        life.charts.push(chart);
        chart.setData(quantileColumns(traces, key));
        return { chart, key };
      });
      return true;
    },
  };
}

function checkpointSpecs(first) {
  const numeric = Object.keys(first).filter((k) => typeof first[k] === "number" && !["iter", "epoch", "seq", "lr"].includes(k));
  return CHECKPOINT.map(([word, title]) => ({ title, keys: numeric.filter((k) => k.includes(word)).map((k) => [k, k]) }))
    .filter((s) => s.keys.length);
}

/** [iters, median, q10, q90] of `key` over runs, aligned by iteration. */
export function quantileColumns(traces, key) {
  const at = new Map();
  for (const t of traces) {
    const vals = t[key] || [];
    t.iter.forEach((it, i) => {
      const v = vals[i];
      if (typeof v !== "number" || !Number.isFinite(v)) return;
      if (!at.has(it)) at.set(it, []);
      at.get(it).push(v);
    });
  }
  const iters = [...at.keys()].sort((a, b) => a - b);
  const q = (xs, p) => xs[Math.min(xs.length - 1, Math.max(0, Math.round(p * (xs.length - 1))))];
  const cols = [iters, [], [], []];
  for (const it of iters) {
    const xs = at.get(it).sort((a, b) => a - b);
    cols[1].push(q(xs, 0.5));
    cols[2].push(q(xs, 0.1));
    cols[3].push(q(xs, 0.9));
  }
  return cols;
}

export const legendNote = (kind) => el("p", { class: "muted" }, kind === "sweep"
  ? "While a sweep runs, each point is the mean and range over its runs; once it succeeds, the median and the 10–90% band of the per-run traces (when the result carries them)."
  : kind === "checkpoint" ? "One point per epoch." : "Polled from /metrics?since= while the job runs.");
