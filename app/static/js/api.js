// The page's one client of the API: the key, requests that carry it, and
// Server-Sent Events read from fetch (EventSource cannot send a header, so
// with keys on it could not stream at all).
const KEY = "digitgen.key";

export function apiKey() {
  return sessionStorage.getItem(KEY) ?? localStorage.getItem(KEY) ?? "";
}

export function keyRemembered() {
  return localStorage.getItem(KEY) !== null;
}

// The key for this tab only, or (remember) in this browser's storage.
export function setApiKey(value, remember) {
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
  if (value) (remember ? localStorage : sessionStorage).setItem(KEY, value);
}

export class ApiError extends Error {
  constructor(status, message, code = "") {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Every error the server sends is a problem body: {status, code, detail}.
async function problem(r) {
  let detail = r.statusText, code = "";
  try {
    const body = await r.json();
    detail = body.detail || detail;
    code = body.code || "";
  } catch (_) { /* not JSON */ }
  if (r.status === 401) {
    detail = apiKey() ? "the API key was refused: check it under “API key”"
      : "this server needs an API key: enter it under “API key”";
  }
  const retry = r.headers.get("Retry-After");
  return new ApiError(r.status, `${r.status}: ${detail}${retry ? ` (retry in ${retry} s)` : ""}`, code);
}

export async function api(path, {json, method, signal, accept} = {}) {
  const headers = {};
  if (json !== undefined) headers["Content-Type"] = "application/json";
  if (accept) headers.Accept = accept;
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let r;
  try {
    r = await fetch(path, {method: method || (json !== undefined ? "POST" : "GET"), headers, signal,
                           body: json !== undefined ? JSON.stringify(json) : undefined});
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `the server cannot be reached (${err.message})`);
  }
  if (!r.ok) throw await problem(r);
  return r;
}

// POST `body` to a streaming route and call on[event](data) for each event
// until `done`; the server's `event: error` is thrown as an ApiError. Abort
// `signal` to stop: the server drops the work within a step.
export async function stream(path, body, on, signal) {
  const r = await api(path, {json: body, signal, accept: "text/event-stream"});
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", event = "message", data = [];
  const dispatch = () => {
    if (!data.length) return false;
    const parsed = JSON.parse(data.join("\n"));
    const name = event;
    event = "message";
    data = [];
    if (name === "error") throw new ApiError(parsed.status || 500, `${parsed.status}: ${parsed.detail}`, parsed.code);
    on[name]?.(parsed);
    return name === "done";
  };
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += value;
    // whole lines only; a chunk may end between "\r" and "\n"
    const lines = buffer.split(/\r\n|\n|\r(?!$)/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (dispatch()) { reader.cancel(); return; }
      } else if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      // id:, retry: and ":" keep-alive comments need nothing here
    }
  }
  throw new ApiError(0, "the connection to the server was lost before the run finished");
}

export const png = (b64) => "data:image/png;base64," + b64;

export function blobOf(b64, type = "image/png") {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], {type});
}

export function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
