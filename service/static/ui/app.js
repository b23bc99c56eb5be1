// The dashboard's router: #/jobs, #/job/<id>, #/submit. Each page gets a `life` whose timers and charts
// end when the page is left, so nothing keeps polling in the background.
import { getKey, setKey, whenUnauthorized, describe } from "./api.js";
import { el } from "./format.js";
import { jobPage } from "./job.js";
import { jobsPage } from "./jobs.js";
import { submitPage } from "./submit.js";

const view = document.getElementById("view");
let life = null;

function newLife() {
  const timers = [];
  const l = {
    alive: true,
    charts: [],
    every(ms, fn) {
      let busy = false;
      timers.push(setInterval(async () => {
        if (busy || !l.alive) return;
        busy = true;
        try { await fn(); } catch (e) { failed(e); } finally { busy = false; }
      }, ms));
    },
    end() {
      l.alive = false;
      timers.forEach(clearInterval);
      l.charts.forEach((c) => c.destroy());
    },
  };
  return l;
}

function failed(e) {
  if (e.status === 401) return; // the key prompt is showing
  view.querySelector("#page-error")?.remove();
  view.prepend(el("p", { id: "page-error", class: "error" }, describe(e)));
}

async function route() {
  life?.end();
  life = newLife();
  document.getElementById("auth").hidden = true;
  const [path, query] = (location.hash.slice(1) || "/jobs").split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean);
  view.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  try {
    if (parts[0] === "job" && parts[1]) await jobPage(view, parts[1], life);
    else if (parts[0] === "submit") await submitPage(view, params, life);
    else await jobsPage(view, params, life);
  } catch (e) { failed(e); }
}

whenUnauthorized((detail) => {
  const box = document.getElementById("auth");
  document.getElementById("auth-detail").textContent = typeof detail === "string" ? detail : "";
  if (box.hidden) {
    box.hidden = false;
    document.getElementById("auth-key").focus();
  }
});
document.getElementById("auth-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setKey(document.getElementById("auth-key").value.trim());
  document.getElementById("key").value = getKey();
  route();
});
const keyInput = document.getElementById("key");
keyInput.value = getKey();
document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setKey(keyInput.value.trim());
  route();
});
window.addEventListener("hashchange", route);
route();
