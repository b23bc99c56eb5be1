// One job: header (state, progress, ETA, actions), live charts, and once finished its summary, bound
// checks (toy), per-layer sparsity (checkpoint), artifacts with their sha256, and its spec.
import { api, describe } from "./api.js";
import { barChart } from "./charts.js";
import { bytes, el, num, progress, stateBadge, when } from "./format.js";
import { kindOf, unitOf } from "./jobs.js";
import { legendNote, liveCharts } from "./live.js";
import { BOUNDS, HYPOTHESES } from "./text.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
// A result document larger than this is not parsed in the browser (a 1,000-run sweep's is about 17 MB).
const MAX_RESULT_BYTES = 128 * 2 ** 20;

export async function jobPage(view, id, life) {
  let job = await api(`v1/jobs/${id}`);
  const kind = kindOf(job);
  const head = el("section", { id: "job-head" });
  const charts = el("div", { class: "charts", id: "charts" });
  const after = el("div", { id: "after" });
  view.replaceChildren(el("h1", {}, `${kind} job `, el("span", { class: "mono" }, id)), head,
    el("h2", {}, "Metrics"), legendNote(kind), charts, after);
  const live = liveCharts(charts, kind, life);
  let since = 0;
  let done = false;

  async function tick() {
    job = await api(`v1/jobs/${id}`);
    if (!life.alive) return;
    header(head, job, life);
    let m;
    do { // a long trace comes in pages of 10,000 points
      m = await api(`v1/jobs/${id}/metrics?since=${since}`);
      since = m.next_since;
      live.add(m.points);
    } while (m.points.length >= 10000 && life.alive);
    if (TERMINAL.has(job.state) && life.alive) {
      done = true;
      await finished(after, job, kind, live, life);
    }
  }
  life.every(1000, () => (done ? null : tick()));
  return tick();
}

function header(box, job, life) {
  const act = async (fn) => {
    try { await fn(); } catch (e) { box.append(el("p", { class: "error" }, describe(e))); }
  };
  const cancel = el("button", { id: "cancel", disabled: TERMINAL.has(job.state) || job.cancel_requested,
    onclick: () => act(() => api(`v1/jobs/${job.id}/cancel`, { method: "POST" })) }, "Cancel");
  const del = el("button", { id: "delete", class: "danger", onclick: () => act(async () => {
    if (!window.confirm(`Delete job ${job.id}, its trace and its artifacts?`)) return;
    await api(`v1/jobs/${job.id}`, { method: "DELETE" });
    if (life.alive) location.hash = "#/jobs";
  }) }, "Delete");
  box.replaceChildren(
    el("dl", { class: "kv" },
      el("dt", {}, "state"), el("dd", { id: "job-state" }, stateBadge(job.state),
        job.cancel_requested && !TERMINAL.has(job.state) ? " (cancel requested)" : ""),
      el("dt", {}, "progress"), el("dd", {}, progress(job.progress, job.state, unitOf(job))),
      el("dt", {}, "created"), el("dd", {}, when(job.created_at)),
      el("dt", {}, "started"), el("dd", {}, when(job.started_at)),
      el("dt", {}, "finished"), el("dd", {}, when(job.finished_at)),
      el("dt", {}, "attempts"), el("dd", {}, job.attempts),
      job.error && [el("dt", {}, "error"), el("dd", { class: "error" }, job.error)]),
    el("div", { class: "actions" }, cancel, del));
}

async function finished(box, job, kind, live, life) {
  const parts = [];
  if (job.summary) parts.push(el("h2", {}, "Summary"), keyValues(job.summary));
  let result = null;
  const files = await api(`v1/jobs/${job.id}/artifacts`).catch(() => []);
  const doc = files.find((a) => a.name === "result.json" || a.name === "report.json");
  if (doc && doc.size > MAX_RESULT_BYTES) {
    parts.push(el("p", { class: "muted" }, `The result (${bytes(doc.size)}) is too large to load here; download it below.`));
  } else if (job.state === "succeeded") {
    try { result = await api(`v1/jobs/${job.id}/result`); } catch (e) { parts.push(el("p", { class: "error" }, describe(e))); }
  }
  if (!life.alive) return;
  box.replaceChildren(...parts);
  if (result && kind === "toy") box.append(...toyResult(result));
  if (result && kind === "sweep") {
    live.quantiles(result.runs);
    box.append(...sweepBounds(result.runs));
  }
  if (result && kind === "checkpoint") layers(box, result, life);
  box.append(el("h2", {}, "Artifacts"), await artifacts(job));
  box.append(el("h2", {}, "Spec"), el("pre", {}, JSON.stringify(job.spec, null, 1)));
}

function keyValues(obj) {
  return el("dl", { class: "kv", id: "summary" }, Object.entries(obj).flatMap(([k, v]) =>
    [el("dt", {}, k), el("dd", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : num(v))]));
}

const yesNo = (v) => (v === true ? el("span", { class: "yes" }, "yes") : v === false ? el("span", { class: "no" }, "no")
  : el("span", { class: "na" }, "undefined"));

function toyResult(result) {
  const out = [];
  const bounds = Array.isArray(result.bounds) ? result.bounds : [];
  if (bounds.length) {
    out.push(el("h2", {}, "Bound checks"), el("section", {}, el("table", { id: "bounds" },
      el("thead", {}, el("tr", {}, ["bound", "what it says", "lhs", "rhs", "holds", "hypotheses met"].map((h) => el("th", {}, h)))),
      el("tbody", {}, bounds.map((b) => el("tr", {},
        el("td", {}, el("code", {}, b.name)),
        el("td", {}, BOUNDS[b.name] ?? "", el("br"), el("code", { class: "muted" }, b.formula ?? ""),
          b.note ? el("div", { class: "muted" }, b.note) : null),
        el("td", { class: "num" }, num(b.lhs, 6)), el("td", { class: "num" }, num(b.rhs, 6)),
        el("td", {}, yesNo(b.holds)), el("td", {}, yesNo(b.hypotheses_met))))))));
  }
  const hyp = result.hypotheses && typeof result.hypotheses === "object" ? result.hypotheses : null;
  if (hyp) {
    const rows = Object.entries(hyp).filter(([, v]) => typeof v === "boolean");
    const values = Object.entries(hyp).filter(([, v]) => typeof v === "number").map(([k, v]) => `${k} = ${num(v)}`);
    out.push(el("h2", {}, "Theorem hypotheses"), el("section", {}, el("table", { id: "hypotheses" },
      el("thead", {}, el("tr", {}, ["hypothesis", "what it says", "met"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("td", {}, el("code", {}, k)), el("td", {}, HYPOTHESES[k] ?? ""),
        el("td", {}, yesNo(v)))))), el("p", { class: "muted" }, values.join(" · "))));
  }
  return out;
}

function sweepBounds(runs) {
  if (!Array.isArray(runs) || !runs.length) return [];
  const tally = new Map();
  for (const r of runs) {
    for (const b of Array.isArray(r?.bounds) ? r.bounds : []) {
      const t = tally.get(b.name) ?? { holds: 0, fails: 0, undef: 0, met: 0 };
      t[b.holds === true ? "holds" : b.holds === false ? "fails" : "undef"] += 1;
      if (b.hypotheses_met) t.met += 1;
      tally.set(b.name, t);
    }
  }
  if (!tally.size) return [];
  const head = ["bound", "what it says", "holds", "fails", "undefined", "hypotheses met"].map((h) => el("th", {}, h));
  const rows = [...tally].map(([name, t]) => el("tr", {}, el("td", {}, el("code", {}, name)), el("td", {}, BOUNDS[name] ?? ""),
    [t.holds, t.fails, t.undef, t.met].map((n) => el("td", { class: "num" }, n))));
  return [el("h2", {}, `Bound checks over ${runs.length} runs`),
    el("section", {}, el("table", { id: "bounds" }, el("thead", {}, el("tr", {}, head)), el("tbody", {}, rows)))];
}

function layers(box, report, life) {
  const entries = Object.entries(report?.sparsity?.layers ?? {});
  if (!entries.length) return;
  const prunable = new Set(report.sparsity.prunable_names ?? []);
  box.append(el("h2", {}, "Sparsity per tensor"));
  const holder = el("div", { id: "layers" });
  box.append(holder);
  life.charts.push(barChart(holder, { title: `zeros per tensor (prunable: ${num(report.sparsity.prunable)}, overall: ${num(report.sparsity.overall)})`,
    names: entries.map(([n]) => n), values: entries.map(([, v]) => v.sparsity), yLabel: "fraction of zeros" }));
  box.append(el("section", {}, el("table", {},
    el("thead", {}, el("tr", {}, ["#", "tensor", "elements", "zeros", "sparsity"].map((h) => el("th", {}, h)))),
    el("tbody", {}, entries.map(([n, v], i) => el("tr", {}, el("td", { class: "num" }, i),
      el("td", {}, el("code", {}, n), prunable.has(n) ? "" : el("span", { class: "muted" }, " (not sparsified)")),
      el("td", { class: "num" }, v.numel), el("td", { class: "num" }, v.zeros), el("td", { class: "num" }, num(v.sparsity))))))));
}

async function artifacts(job) {
  let list = [];
  try { list = await api(`v1/jobs/${job.id}/artifacts`); } catch (e) { return el("p", { class: "error" }, describe(e)); }
  if (!list.length) return el("p", { class: "muted" }, "none");
  return el("section", {}, el("table", { id: "artifacts" },
    el("thead", {}, el("tr", {}, ["file", "size", "sha256", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, list.map((a) => {
      const status = el("span", { class: "muted" });
      return el("tr", { dataset: { artifact: a.name } },
        el("td", {}, a.name), el("td", { class: "num" }, bytes(a.size)), el("td", { class: "mono sha" }, a.sha256),
        el("td", {}, el("button", { onclick: () => download(job, a, status) }, "Download"), " ", status));
    }))));
}

/** Fetched with the API key (a plain link would not send it), checked against the listed sha256, saved. */
async function download(job, a, status) {
  status.textContent = "…";
  try {
    const res = await api(`v1/jobs/${job.id}/artifacts/${encodeURIComponent(a.name)}`, { raw: true });
    const blob = await res.blob();
    if (crypto.subtle) {
      const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
      const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
      status.textContent = hex === a.sha256 ? "sha256 verified" : "sha256 MISMATCH";
      status.className = hex === a.sha256 ? "yes" : "no";
    } else status.textContent = "";
    const link = el("a", { href: URL.createObjectURL(blob), download: a.name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (e) {
    status.textContent = describe(e);
    status.className = "error";
  }
}
