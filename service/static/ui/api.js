// The JSON API, with the API key (localStorage) as a bearer token. A 401 opens the key prompt.
const KEY = "rvsm.apiKey";
export const BASE = new URL("../", document.baseURI); // the service root: the dashboard lives at <root>/ui/

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    this.status = status;
    this.detail = detail;
  }
}

export const getKey = () => localStorage.getItem(KEY) || "";
export function setKey(key) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

/** fetch() on the service with the key; JSON in and out (FormData bodies go as they are). */
export async function api(path, { method = "GET", body, raw = false } = {}) {
  const headers = {};
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const res = await fetch(new URL(path, BASE), { method, headers, body });
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail ?? detail; } catch { /* not JSON */ }
    if (res.status === 401) onUnauthorized(detail);
    throw new ApiError(res.status, detail);
  }
  if (raw) return res;
  return res.status === 204 ? null : res.json();
}

/** A 422's list of {loc, msg} as lines naming each field. */
export function describe(err) {
  if (Array.isArray(err.detail)) {
    return err.detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("\n");
  }
  return err.message;
}
