// Small formatting helpers shared by the pages.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

export function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  s = Math.round(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function num(x, digits = 4) {
  if (x === null || x === undefined) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? x.toExponential(digits - 1) : x.toPrecision(digits);
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 2 ** 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

export const stateBadge = (state) => el("span", { class: `state ${state}` }, state);

/** Fraction as a bar and a percentage, then iteration / epoch / step and the ETA, whatever the job reports
 * (`unit` names `iteration` of `max_iters`: a checkpoint job counts epochs there). */
export function progress(p, state, unit = "iter") {
  const frac = Math.max(0, Math.min(1, p?.fraction ?? 0));
  const parts = [];
  if (p?.epochs) parts.push(`epoch ${p.epoch ?? 0}/${p.epochs}`);
  if (p?.steps) parts.push(`step ${p.step ?? 0}/${p.steps}`);
  if (!p?.epochs && p?.max_iters) parts.push(`${unit} ${p.iteration ?? 0}/${p.max_iters}`);
  if (state === "running" || state === "queued") parts.push(`ETA ${duration(p?.eta_s)}`);
  return el("span", { class: "progress" },
    el("span", { class: "bar" }, el("span", { style: `width:${(frac * 100).toFixed(1)}%` })),
    ` ${(frac * 100).toFixed(0)}% `, el("span", { class: "muted" }, parts.join(" · ")));
}
