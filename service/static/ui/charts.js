// Charts by uPlot (vendored, global `uPlot`): live line charts, quantile bands, bars. Each chart's
// container carries data-points (how many x values it plots), which the browser test reads.
import { el, num } from "./format.js";

const COLORS = ["#2457c5", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#1098ad"];

function size(box) {
  return { width: Math.max(300, box.clientWidth - 10), height: 200 };
}

/** A log axis labels its powers of ten only. */
function decade(v) {
  const e = Math.log10(v);
  return Math.abs(e - Math.round(e)) < 1e-9 ? (Math.abs(e) < 3 ? String(v) : `1e${Math.round(e)}`) : "";
}

/** A chart box: title, a uPlot instance, and setData() that keeps data-points current. */
export class LineChart {
  constructor(parent, { title, series, yLabel = "", xLabel = "iteration", band = null, bars = false, xValues = null, yRange = null, log = false }) {
    this.box = el("div", { class: "chart", dataset: { chart: title, points: "0" } }, el("h3", {}, title));
    parent.append(this.box);
    const opts = {
      ...size(this.box),
      scales: { x: { time: false }, y: yRange ? { range: yRange } : log ? { distr: 3 } : {} },
      axes: [
        { label: xLabel, values: xValues ? (_u, ticks) => ticks.map(xValues) : undefined },
        { label: yLabel, size: 64, values: (_u, ticks) => ticks.map((v) => (log ? decade(v) : num(v, 3))) },
      ],
      series: [{ label: xLabel }, ...series.map((s, i) => ({
        label: s.label,
        stroke: s.stroke ?? COLORS[i % COLORS.length],
        fill: s.fill,
        width: s.width ?? 1.5,
        points: { show: (u) => u.data[0].length < 30 }, // a short trace (or one point) shows its points
        paths: bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined,
        value: (_u, v) => (v === null || v === undefined ? "–" : Number(v).toPrecision(5)),
      }))],
      bands: band ? [band] : undefined,
    };
    this.log = log;
    this.plot = new uPlot(opts, [[], ...series.map(() => [])], this.box);
    this.resize = () => this.plot.setSize(size(this.box));
    window.addEventListener("resize", this.resize);
  }

  /** [xs, ys...]; on a log axis values <= 0 are left out (gaps). */
  setData(columns) {
    if (this.log) columns = [columns[0], ...columns.slice(1).map((ys) => ys.map((v) => (v > 0 ? v : null)))];
    this.plot.setData(columns);
    this.box.dataset.points = String(columns[0].length);
  }

  destroy() {
    if (this.dead) return;
    this.dead = true;
    window.removeEventListener("resize", this.resize);
    this.plot.destroy();
    this.box.remove();
  }
}

/** A band chart: a centre line and a shaded range between a low and a high series. */
export function bandChart(parent, { title, centre, low, high, yLabel }) {
  return new LineChart(parent, {
    title, yLabel,
    series: [
      { label: centre, stroke: COLORS[0], width: 2 },
      { label: low, stroke: "rgba(36,87,197,0.35)", width: 1 },
      { label: high, stroke: "rgba(36,87,197,0.35)", width: 1 },
    ],
    band: { series: [3, 2], fill: "rgba(36,87,197,0.15)" },
  });
}

/** Bars, one per name (x is the index; the axis shows the index, the legend the name). */
export function barChart(parent, { title, names, values, yLabel }) {
  const chart = new LineChart(parent, {
    title, yLabel, xLabel: "tensor", bars: true,
    series: [{ label: yLabel, stroke: COLORS[0], fill: "rgba(36,87,197,0.45)" }],
    xValues: (i) => (Number.isInteger(i) && names[i] !== undefined ? String(i) : ""), yRange: [0, 1],
  });
  chart.setData([names.map((_, i) => i), values]);
  return chart;
}
