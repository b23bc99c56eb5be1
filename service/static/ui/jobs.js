// The job list: state, progress, ETA, kind, created; filters by state (server side) and kind; auto-refresh.
import { api } from "./api.js";
import { el, progress, stateBadge, when } from "./format.js";

const STATES = ["", "queued", "running", "succeeded", "failed", "cancelled"];
const KINDS = ["", "toy", "sweep", "checkpoint"];

export const unitOf = (job) => (job.kind === "checkpoint" ? "epoch" : "iter");
/** toy jobs with a sweep are shown (and filtered) as "sweep". */
export const kindOf = (job) => (job.kind === "toy" && job.spec?.sweep ? "sweep" : job.kind);

export function jobsPage(view, params, life) {
  const f = { state: params.get("state") || "", kind: params.get("kind") || "", auto: true };
  const select = (name, options) =>
    el("select", { id: `filter-${name}`, onchange: (e) => { f[name] = e.target.value; refresh(); } },
      options.map((o) => el("option", { value: o, selected: o === f[name] }, o || "any")));
  const body = el("tbody");
  const count = el("span", { class: "muted" });
  view.replaceChildren(
    el("h1", {}, "Jobs"),
    el("div", { class: "filters" },
      el("label", {}, "state ", select("state", STATES)),
      el("label", {}, "kind ", select("kind", KINDS)),
      el("label", {}, el("input", { type: "checkbox", id: "auto", checked: true,
        onchange: (e) => { f.auto = e.target.checked; } }), " auto-refresh"),
      count),
    el("section", {}, el("table", { id: "jobs" },
      el("thead", {}, el("tr", {}, ["job", "state", "progress", "kind", "created", "finished"].map((h) => el("th", {}, h)))),
      body)));

  async function refresh() {
    const q = new URLSearchParams({ limit: "500" });
    if (f.state) q.set("state", f.state);
    const list = await api(`v1/jobs?${q}`);
    if (!life.alive) return;
    const items = list.items.filter((j) => !f.kind || kindOf(j) === f.kind);
    count.textContent = `${items.length} shown of ${list.total}`;
    body.replaceChildren(...items.map((j) => el("tr", { dataset: { job: j.id } },
      el("td", {}, el("a", { href: `#/job/${j.id}`, class: "mono" }, j.id.slice(0, 12))),
      el("td", {}, stateBadge(j.state)),
      el("td", {}, progress(j.progress, j.state, unitOf(j))),
      el("td", {}, kindOf(j)),
      el("td", {}, when(j.created_at)),
      el("td", {}, when(j.finished_at)))));
    if (!items.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "no jobs")));
  }
  life.every(2000, () => (f.auto ? refresh() : null));
  return refresh();
}
