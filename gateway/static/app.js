// The reelstream web page: order, estimate, watch, cancel, play, download, browse history.
// Plain ES module, no build step. Fetches carry the API key as a Bearer header; media elements and the
// WebSocket cannot send headers, so they ride the HttpOnly session cookie set by POST /api/v1/session.
const $ = (id) => document.getElementById(id);
const KEY_STORE = "reelstream_api_key";
const STAGES = ["queued", "analyzing", "planning", "prompting", "generating", "assembling", "completed"];
const TERMINAL = new Set(["completed", "failed", "canceled"]);

const state = { key: sessionStorage.getItem(KEY_STORE) || "", watching: null, socket: null, cursors: [null] };

// -- API -----------------------------------------------------------------------------------------

function headers(extra = {}) {
  const h = { ...extra };
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || "the server answered " + status);
    this.status = status;
    this.code = err.code || "http_" + status;
    this.details = err.details || [];
  }
}

async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { error: { code: "unreachable", message: "the server cannot be reached" } });
  }
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (resp.status === 401 && path !== "/api/v1/session") askForKey("The API key was refused; enter it again.");
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

// -- API key and session cookie ------------------------------------------------------------------

function askForKey(message) {
  $("key-section").hidden = false;
  $("signed-in").hidden = true;
  $("err-api_key").textContent = message || "";
  $("api-key").focus();
}

// True: cookie set; false: the key is refused; null: the server cannot be reached.
async function startSession(key) {
  try {
    const resp = await fetch("/api/v1/session", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ api_key: key }),
    });
    return resp.status === 204;
  } catch (e) {
    return null;
  }
}

$("key-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) { $("err-api_key").textContent = "Enter your API key."; return; }
  const started = await startSession(key);
  if (!started) {
    $("err-api_key").textContent = started === null ? "The server cannot be reached." : "That API key is not valid.";
    return;
  }
  state.key = key;
  sessionStorage.setItem(KEY_STORE, key);
  $("api-key").value = "";
  $("key-section").hidden = true;
  $("signed-in").hidden = false;
  $("err-api_key").textContent = "";
  loadHistory();
  $("prompt").focus();
});

$("sign-out").addEventListener("click", async () => {
  await fetch("/api/v1/session", { method: "DELETE" });
  sessionStorage.removeItem(KEY_STORE);
  state.key = "";
  askForKey("");
});

// -- the order form ------------------------------------------------------------------------------

const list = (text, sep) => text.split(sep).map((s) => s.trim()).filter(Boolean);

function orderBody() {
  const body = {
    prompt: $("prompt").value,
    duration_seconds: Number($("duration").value),
    aspect_ratio: $("aspect").value,
    options: {
      resolution: $("resolution").value,
      transitions: $("transitions").value,
      captions: $("captions").checked,
    },
  };
  if ($("cta").value.trim()) body.options.cta_text = $("cta").value;
  const brand = {};
  const text = { name: "brand-name", tone: "brand-tone", tagline: "brand-tagline", logo_url: "brand-logo" };
  for (const [field, id] of Object.entries(text)) if ($(id).value.trim()) brand[field] = $(id).value;
  const colors = list($("brand-colors").value, ",");
  const fonts = list($("brand-fonts").value, ",");
  if (colors.length) brand.colors = colors;
  if (fonts.length) brand.fonts = fonts;
  const guidelines = {};
  const dos = list($("brand-do").value, "\n");
  const donts = list($("brand-dont").value, "\n");
  if (dos.length) guidelines.do = dos;
  if (donts.length) guidelines.dont = donts;
  if ($("brand-disclaimer").value.trim()) guidelines.required_disclaimer = $("brand-disclaimer").value;
  if (Object.keys(guidelines).length) brand.guidelines = guidelines;
  if (Object.keys(brand).length) body.brand = brand;
  return body;
}

function clearErrors() {
  for (const el of document.querySelectorAll("#order-form .field-error")) el.textContent = "";
  for (const el of document.querySelectorAll("#order-form [aria-invalid]")) el.removeAttribute("aria-invalid");
}

// The input a field path belongs to: the longest data-field that is a prefix of it
// ("brand.colors.0" → the colours input), else the form-wide message.
function inputFor(path) {
  let best = null;
  for (const el of document.querySelectorAll("#order-form [data-field]")) {
    const f = el.dataset.field;
    if ((path === f || path.startsWith(f + ".")) && (!best || f.length > best.dataset.field.length)) best = el;
  }
  return best;
}

// Plainer words for the messages people meet most; the API's own message otherwise.
const PLAIN = {
  "brand.colors": (m) => (m.includes("pattern") ? "use a hex colour like #0A84FF" : m),
  "duration_seconds": (m) => (m.includes("valid integer") ? "enter a whole number of seconds" : m),
};

function describe(path, field, message) {
  const plain = (PLAIN[field] || ((m) => m))(message);
  const index = path.slice(field.length + 1).split(".")[0];
  if (!/^\d+$/.test(index)) return plain;
  const value = field === "brand.colors" ? list($("brand-colors").value, ",")[Number(index)] : undefined;
  return `item ${Number(index) + 1}${value ? ` ("${value}")` : ""}: ${plain}`;
}

function showErrors(err) {
  clearErrors();
  if (!err.details.length) { $("err-body").textContent = err.message; return; }
  let first = null;
  for (const d of err.details) {
    const input = inputFor(d.field);
    if (!input) { $("err-body").textContent += `${d.field}: ${d.message} `; continue; }
    const box = $("err-" + input.dataset.field.replaceAll(".", "-"));
    box.textContent = (box.textContent ? box.textContent + "; " : "") + describe(d.field, input.dataset.field, d.message);
    input.setAttribute("aria-invalid", "true");
    first = first || input;
  }
  if (!$("err-body").textContent) $("err-body").textContent = "Please correct the marked fields.";
  if (first) first.focus();
}

function money(usd) { return "$" + usd.toFixed(2); }

async function estimate() {
  clearErrors();
  $("estimate").textContent = "Estimating…";
  try {
    const e = await api("/api/v1/estimates", { method: "POST", body: orderBody() });
    $("estimate").textContent = `Estimate: ${e.clips.length} clips, about ${Math.round(e.estimated_compute_seconds)} s`
      + ` of compute on ${e.model}, ${money(e.estimated_cost_usd)}.`;
    return e;
  } catch (err) {
    $("estimate").textContent = "";
    showErrors(err);
    return null;
  }
}

$("estimate-button").addEventListener("click", estimate);

$("order-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!(await estimate())) return; // the estimate is shown before anything is ordered
  $("submit-button").disabled = true;
  try {
    const created = await api("/api/v1/generations", { method: "POST", body: orderBody() });
    openGeneration(created.generation_id);
    loadHistory();
  } catch (err) {
    showErrors(err);
  } finally {
    $("submit-button").disabled = false;
  }
});

// -- one generation, live ------------------------------------------------------------------------

function renderTimeline(status) {
  const ol = $("timeline");
  ol.replaceChildren();
  const reached = STAGES.indexOf(status);
  const steps = status === "failed" || status === "canceled" ? [...STAGES.slice(0, -1), status] : STAGES;
  for (const [i, name] of steps.entries()) {
    const li = document.createElement("li");
    li.textContent = name;
    li.dataset.stage = name;
    if (name === status) {
      li.className = name === "failed" || name === "canceled" ? "ended-bad" : name === "completed" ? "done" : "current";
      li.setAttribute("aria-current", "step");
    } else if (reached >= 0 && i < reached) li.className = "done";
    ol.append(li);
  }
}

function renderProgress(status, progress) {
  $("job-bar").value = progress.percent;
  const clips = progress.clips_total ? `, clips ${progress.clips_completed}/${progress.clips_total} done` : "";
  $("job-status").textContent = `${status}: ${progress.percent}%${clips}`;
  $("job").dataset.status = status;
  renderTimeline(status);
  $("cancel-button").hidden = TERMINAL.has(status);
}

function renderClip(id, clip) {
  let li = document.querySelector(`#clips li[data-clip-id="${clip.clip_id}"]`);
  if (!li) {
    li = document.createElement("li");
    li.className = "clip";
    li.dataset.clipId = clip.clip_id;
    const title = document.createElement("strong");
    title.textContent = `Clip ${clip.index + 1}`;
    const status = document.createElement("span");
    status.className = "status";
    li.append(title, " ", status);
    const lis = [...$("clips").children];
    const after = lis.find((other) => Number(other.dataset.index) > clip.index);
    $("clips").insertBefore(li, after || null);
  }
  li.dataset.index = clip.index;
  li.dataset.status = clip.status;
  li.querySelector(".status").textContent = `${clip.status} · ${Math.round(clip.duration_seconds * 10) / 10} s`;
  if (clip.status === "succeeded" && !li.querySelector("video")) {
    const video = document.createElement("video");
    video.controls = true;
    video.muted = true;
    video.preload = "metadata";
    video.setAttribute("aria-label", `Preview of clip ${clip.index + 1}`);
    video.src = `/api/v1/generations/${id}/clips/${clip.clip_id}/video`;
    li.append(video);
  }
}

function renderCompliance(compliance) {
  const box = $("compliance");
  box.hidden = !compliance;
  if (!compliance) return;
  const dl = $("compliance-list");
  dl.replaceChildren();
  const row = (term, value) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dl.append(dt, dd);
  };
  const removed = compliance.avoided_words_removed || [];
  row("Avoided words removed", removed.length ? removed.join(", ") : "none");
  row("Disclaimer on screen", compliance.disclaimer_on_screen_seconds == null ? "no disclaimer"
    : `${compliance.disclaimer_on_screen_seconds} s`);
  row("Logo", compliance.logo === "placed" ? "placed" : compliance.logo === "none" ? "no logo given" : compliance.logo);
}

function renderDetail(g) {
  $("job-prompt").textContent = g.prompt;
  renderProgress(g.status, g.progress);
  for (const clip of g.clips || []) renderClip(g.generation_id, clip);
  $("job-error").textContent = g.error ? `${g.status}: ${g.error.message} (${g.error.code})` : "";
  renderCompliance(g.compliance);
  const cost = g.cost; // estimate at order time; actual compute and price once the provider reports them
  $("job-cost").textContent = !cost || cost.estimated_usd == null ? "" : `Estimated ${money(cost.estimated_usd)}`
    + (cost.actual_usd == null ? "" : `, actual ${money(cost.actual_usd)} for ${cost.compute_seconds} s of compute`);
  if (g.status === "completed") showFinal(g.generation_id);
}

function showFinal(id) {
  const src = `/api/v1/generations/${id}/video`;
  const video = $("final-video");
  if (video.getAttribute("src") !== src) video.src = src;
  $("download").href = src;
  $("download").setAttribute("download", `${id}.mp4`);
  $("final").hidden = false;
}

async function refreshDetail(id) {
  try {
    const g = await api(`/api/v1/generations/${id}`);
    if (state.watching === id) renderDetail(g);
    return g;
  } catch (err) {
    if (state.watching === id) $("job-error").textContent = err.message;
    return null;
  }
}

function watch(id, attempt = 0) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws/generations/${id}`); // the cookie authenticates
  state.socket = ws;
  let ended = false;
  ws.onmessage = (ev) => {
    if (state.watching !== id) return;
    const msg = JSON.parse(ev.data);
    attempt = 0;
    if (msg.type === "snapshot") {
      renderDetail(msg.generation);
      ended = TERMINAL.has(msg.generation.status);
    }
    else if (msg.type === "clip") renderClip(id, msg.clip);
    else if (msg.type === "status") {
      renderProgress(msg.status, msg.progress);
      if (TERMINAL.has(msg.status)) {
        ended = true;
        refreshDetail(id).then(() => loadHistory());
      }
    }
  };
  ws.onclose = (ev) => {
    if (state.watching !== id || ended || state.socket !== ws) return;
    if (ev.code === 4404) { $("job-error").textContent = "No such generation."; return; }
    // Dropped: catch up from the detail, then reconnect (a new snapshot) with a growing pause.
    refreshDetail(id).then((g) => {
      if (g && !TERMINAL.has(g.status) && state.watching === id) {
        setTimeout(() => state.watching === id && watch(id, attempt + 1), Math.min(8000, 500 * 2 ** attempt));
      }
    });
  };
}

function openGeneration(id) {
  if (state.socket) state.socket.close();
  state.watching = id;
  $("clips").replaceChildren();
  $("final").hidden = true;
  $("final-video").removeAttribute("src");
  $("compliance").hidden = true;
  $("job-cost").textContent = "";
  $("job-error").textContent = "";
  $("job-title").textContent = `Generation ${id}`;
  $("job").dataset.generationId = id;
  $("job").hidden = false;
  $("job-status").textContent = "connecting…";
  renderTimeline("queued");
  watch(id);
  $("job-title").scrollIntoView({ block: "start" });
}

$("cancel-button").addEventListener("click", async () => {
  const id = state.watching;
  if (!id) return;
  try {
    const g = await api(`/api/v1/generations/${id}/cancel`, { method: "POST" });
    renderDetail(g);
    loadHistory();
  } catch (err) {
    $("job-error").textContent = err.message;
  }
});

// -- history -------------------------------------------------------------------------------------

async function loadHistory(page = state.page || 0) {
  const params = new URLSearchParams({ limit: "10" });
  const cursor = state.cursors[page];
  if (cursor) params.set("cursor", cursor);
  if ($("history-status").value) params.set("status", $("history-status").value);
  const asked = (state.historyAsked = (state.historyAsked || 0) + 1);
  const ul = $("history-list");
  ul.setAttribute("aria-busy", "true");
  let data;
  try {
    data = await api("/api/v1/generations?" + params);
  } catch (err) {
    if (asked !== state.historyAsked) return;
    $("history-message").textContent = err.status === 401 ? "" : err.message;
    ul.setAttribute("aria-busy", "false");
    return;
  }
  if (asked !== state.historyAsked) return; // a later request (another page, filter or refresh) wins
  state.cursors = state.cursors.slice(0, page + 1);
  if (data.next_cursor) state.cursors.push(data.next_cursor);
  state.page = page;
  ul.replaceChildren();
  for (const item of data.items) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.generationId = item.generation_id;
    const prompt = document.createElement("span");
    prompt.textContent = item.prompt.length > 80 ? item.prompt.slice(0, 79) + "…" : item.prompt;
    const status = document.createElement("span");
    status.className = "status";
    status.textContent = item.status;
    const when = document.createElement("time");
    when.dateTime = item.created_at;
    when.textContent = new Date(item.created_at).toLocaleString();
    if (item.thumbnail_url && item.thumbnail_url.startsWith("/api/")) { // a gateway path: the cookie opens it
      const thumb = document.createElement("img");
      thumb.src = item.thumbnail_url;
      thumb.alt = "";
      thumb.loading = "lazy";
      thumb.className = "thumb";
      button.append(thumb);
    }
    button.append(prompt, status, when);
    button.setAttribute("aria-label", `Open: ${item.prompt.slice(0, 80)}, ${item.status}`);
    button.addEventListener("click", () => openGeneration(item.generation_id));
    li.append(button);
    ul.append(li);
  }
  const filter = $("history-status");
  const shown = filter.value ? ` (${filter.options[filter.selectedIndex].text})` : "";
  $("history-message").textContent = data.items.length ? `Page ${page + 1}${shown}` : `Nothing here yet${shown}.`;
  ul.setAttribute("aria-busy", "false");
  $("history-newer").disabled = page === 0;
  $("history-older").disabled = !data.next_cursor;
}

$("history-status").addEventListener("change", () => { state.cursors = [null]; loadHistory(0); });
$("history-older").addEventListener("click", () => loadHistory(state.page + 1));
$("history-newer").addEventListener("click", () => loadHistory(Math.max(0, state.page - 1)));

// -- start ---------------------------------------------------------------------------------------

async function start() {
  if (state.key && (await startSession(state.key)) === false) { // renew the cookie; a removed key asks again
    sessionStorage.removeItem(KEY_STORE);
    state.key = "";
  }
  const probe = await fetch("/api/v1/generations?limit=1", { headers: headers() }).catch(() => null);
  if (!probe) $("history-message").textContent = "The server cannot be reached; reload the page to try again.";
  else if (probe.status === 401) askForKey("");
  else {
    $("signed-in").hidden = !state.key;
    state.page = 0;
    await loadHistory(0);
  }
  const linked = location.hash.match(/^#(gen_[0-9a-f]{32})$/);
  if (linked) openGeneration(linked[1]);
  document.body.dataset.ready = "true";
}

start();
