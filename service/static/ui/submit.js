// Submit a job: the form is built from the service's own /openapi.json (ToySpecCreate and
// CheckpointSpecCreate), so its fields, choices and defaults are the API's. Fields without a default
// start from the README's example toy job. A checkpoint job may carry checkpoint and dataset files.
import { api, BASE, describe } from "./api.js";
import { el } from "./format.js";

const MODELS = { toy: "ToySpecCreate", checkpoint: "CheckpointSpecCreate" };
// Starting values for the required fields the schema gives no default (the README's example).
const EXAMPLE = { toy: { k: 2, d: 10, teacher: { seed: 0 }, init: { seed: 1 }, lam: 1e-4, beta: 4e-3, eta: 0.1, tol: 1e-14 }, checkpoint: { architecture: "mlp", epochs: 5 } };

let openapi = null;

export async function submitPage(view, params, life) {
  openapi ??= await (await fetch(new URL("openapi.json", BASE))).json();
  const kind = params.get("kind") === "checkpoint" ? "checkpoint" : "toy";
  const body = openapi.paths["/v1/jobs"].post.requestBody.content["application/json"].schema;
  const named = (s) => (s.$ref ? openapi.components.schemas[s.$ref.split("/").pop()] : s);  // models live in components
  const schema = body.oneOf.map(named).find((s) => s.title === MODELS[kind]);
  const schemas = { ...openapi.components?.schemas, ...schema.$defs };
  const fields = Object.entries(schema.properties).map(([name, prop]) => field(name, resolve(prop, schemas), kind, schema));
  const files = kind === "checkpoint" ? [fileInput("checkpoint", "a .pt2, .safetensors or .pt state_dict (optional)"),
    fileInput("dataset", ".safetensors or .npz with x, y (when dataset.name is upload)")] : [];
  const message = el("p", { id: "submit-message", class: "error" });
  const form = el("form", { class: "spec", id: "spec-form", onsubmit: (e) => { e.preventDefault(); send(); } },
    fields.map((f) => f.node), files.map((f) => f.node));
  view.replaceChildren(el("h1", {}, "Submit a job"),
    el("div", { class: "tabs" }, ["toy", "checkpoint"].map((k) =>
      el("button", { class: k === kind ? "on" : "", onclick: () => { location.hash = `#/submit?kind=${k}`; } }, `${k} job`))),
    el("section", {}, el("p", { class: "muted" }, schema.description ?? ""), form,
      el("p", {}, el("button", { class: "primary", type: "submit", form: "spec-form", id: "submit" }, "Submit")), message));

  async function send() {
    message.textContent = "";
    const spec = {};
    try {
      for (const f of fields) {
        const v = f.read();
        if (v !== undefined) spec[f.name] = v;
      }
    } catch (e) { message.textContent = e.message; return; }
    const chosen = files.filter((f) => f.input.files.length);
    let body = spec;
    if (chosen.length) {
      body = new FormData();
      body.append("spec", JSON.stringify(spec));
      for (const f of chosen) body.append(f.name, f.input.files[0]);
    }
    try {
      const created = await api("v1/jobs", { method: "POST", body });
      if (life.alive) location.hash = `#/job/${created.id}`;
    } catch (e) { message.textContent = describe(e); }
  }
}

/** A property's schema with $ref and `X | None` (anyOf with null) resolved; `nullable` says which. */
function resolve(prop, schemas) {
  let p = { ...prop };
  if (p.anyOf) {
    const other = p.anyOf.filter((s) => s.type !== "null");
    p = { ...other[0], ...p, nullable: other.length < p.anyOf.length };
    delete p.anyOf;
  }
  if (p.$ref) p = { ...schemas[p.$ref.split("/").pop()], ...p, object: true };
  return p;
}

function field(name, p, kind, schema) {
  const start = name in EXAMPLE[kind] ? EXAMPLE[kind][name] : p.default;
  const help = el("small", {}, [p.description, rule(p)].filter(Boolean).join(" · "));
  const id = `f-${name}`;
  if (p.const !== undefined) return { name, node: null, read: () => p.const };
  if (p.enum) {
    const input = el("select", { id, name }, p.nullable || start === undefined ? el("option", { value: "" }, "(default)") : null,
      p.enum.map((v) => el("option", { value: v, selected: v === start }, v)));
    return { name, node: el("label", {}, name, input, help), read: () => input.value || undefined };
  }
  if (p.type === "boolean") {
    const input = el("input", { id, name, type: "checkbox", checked: start === true });
    return { name, node: el("label", { class: "check" }, input, name, help), read: () => input.checked };
  }
  if (p.type === "integer" || p.type === "number") {
    const input = el("input", { id, name, type: "number", step: "any", value: start ?? "", required: schema.required?.includes(name) });
    return { name, node: el("label", {}, name, input, help), read: () => (input.value === "" ? undefined : Number(input.value)) };
  }
  if (p.type === "string" && !p.object) {
    const input = el("input", { id, name, type: "text", value: start ?? "" });
    return { name, node: el("label", {}, name, input, help), read: () => input.value || undefined };
  }
  const input = el("textarea", { id, name, placeholder: "JSON" }, start === undefined || start === null ? "" : JSON.stringify(start));
  return { name, node: el("label", {}, `${name} (JSON)`, input, help), read: () => {
    if (!input.value.trim()) return undefined;
    try { return JSON.parse(input.value); } catch (e) { throw new Error(`${name}: not valid JSON (${e.message})`); }
  } };
}

function rule(p) {
  const r = [];
  if (p.minimum !== undefined) r.push(`≥ ${p.minimum}`);
  if (p.exclusiveMinimum !== undefined) r.push(`> ${p.exclusiveMinimum}`);
  if (p.maximum !== undefined) r.push(`≤ ${p.maximum}`);
  if (p.exclusiveMaximum !== undefined) r.push(`< ${p.exclusiveMaximum}`);
  return r.join(", ");
}

function fileInput(name, help) {
  const input = el("input", { id: `file-${name}`, name, type: "file" });
  return { name, input, node: el("label", {}, `${name} file`, input, el("small", {}, help)) };
}
