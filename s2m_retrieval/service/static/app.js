// The sketch page: a drawing canvas (pen, eraser, undo, clear, width; mouse, touch and pen through pointer
// events), upload, filters from the index's label columns, results with "more like this". Talks to /v1 only.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const state = {
    tool: "pen",
    strokes: [],        // {tool, width, points: [{x, y, w}]}, replayed on undo
    base: null,         // an uploaded sketch, drawn under the strokes
    current: null,
    token: sessionStorage.getItem("s2m-token") || "",
    busy: false,
  };

  // ---- drawing -------------------------------------------------------------------------------------------
  function paper() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }

  function drawBase() {
    const b = state.base;
    const scale = Math.min(canvas.width / b.width, canvas.height / b.height);
    const w = b.width * scale, h = b.height * scale;
    ctx.drawImage(b, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  }

  function segment(stroke, a, b) {
    ctx.strokeStyle = stroke.tool === "eraser" ? "#fff" : "#000";
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = stroke.width * b.w;
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
  }

  function drawStroke(stroke) {
    const p = stroke.points;
    segment(stroke, p[0], p[0]);  // a tap leaves a dot
    for (let i = 1; i < p.length; i++) segment(stroke, p[i - 1], p[i]);
  }

  function redraw() {
    paper();
    if (state.base) drawBase();
    state.strokes.forEach(drawStroke);
    $("undo").disabled = state.strokes.length === 0;
  }

  function point(e) {
    const r = canvas.getBoundingClientRect();
    // A pen's pressure thickens the line; mouse and touch draw at the chosen width.
    const w = e.pointerType === "pen" && e.pressure > 0 ? 0.4 + 1.2 * e.pressure : 1;
    return { x: (e.clientX - r.left) * canvas.width / r.width, y: (e.clientY - r.top) * canvas.height / r.height, w };
  }

  canvas.addEventListener("pointerdown", (e) => {
    if (e.pointerType === "mouse" && e.button !== 0) return;
    e.preventDefault();
    try {
      canvas.setPointerCapture(e.pointerId);  // keep the stroke when the pointer leaves the canvas
    } catch (_) { /* a pointer the browser no longer tracks: draw without capture */ }
    state.current = { tool: state.tool, width: Number($("width").value), points: [point(e)] };
    state.strokes.push(state.current);
    drawStroke(state.current);
    $("undo").disabled = false;
  });

  canvas.addEventListener("pointermove", (e) => {
    const stroke = state.current;
    if (!stroke) return;
    e.preventDefault();
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
    for (const ev of events.length ? events : [e]) {
      const p = point(ev);
      segment(stroke, stroke.points[stroke.points.length - 1], p);
      stroke.points.push(p);
    }
  });

  const endStroke = () => { state.current = null; };
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  function setTool(tool) {
    state.tool = tool;
    for (const name of ["pen", "eraser"]) {
      $(name).classList.toggle("active", name === tool);
      $(name).setAttribute("aria-pressed", String(name === tool));
    }
  }

  function undo() {
    state.strokes.pop();
    redraw();
  }

  $("pen").addEventListener("click", () => setTool("pen"));
  $("eraser").addEventListener("click", () => setTool("eraser"));
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", () => {
    state.strokes = [];
    state.base = null;
    $("upload").value = "";
    redraw();
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input, select, textarea")) return;
    if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); }
    else if (e.key === "p") setTool("pen");
    else if (e.key === "e") setTool("eraser");
  });

  $("upload").addEventListener("change", async () => {
    const file = $("upload").files[0];
    if (!file) return;
    try {
      state.base = await createImageBitmap(file);
      state.strokes = [];
      redraw();
      say(`Loaded ${file.name}: draw over it or press Search.`);
    } catch (_) {
      say(`${file.name} cannot be read as an image (PNG or JPEG).`, true);
    }
  });

  // ---- API -----------------------------------------------------------------------------------------------
  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers);
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const res = await fetch(path, Object.assign({}, options, { headers }));
    let data = null;
    try { data = await res.json(); } catch (_) { /* not JSON: the status says enough */ }
    if (res.status === 401) $("token-form").hidden = false;
    if (!res.ok) throw new Error((data && data.detail) || `the server answered HTTP ${res.status}`);
    return data;
  }

  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("s2m-token", state.token);
    $("token-form").hidden = true;
    loadIndex();
  });

  function say(text, isError = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", isError);
  }

  // ---- filters -------------------------------------------------------------------------------------------
  const NUMBER = /^-?\d+(\.\d+)?$/;
  const SHOWN_LABELS = 4;  // on a card; all of them in its tooltip

  function filterControl(name, col) {
    const row = document.createElement("div");
    row.className = "filter";
    const label = document.createElement("span");
    label.textContent = name.replace(/_/g, " ");
    row.append(label);
    if (col.values) {
      const select = document.createElement("select");
      select.dataset.column = name;
      select.setAttribute("aria-label", name);
      select.append(new Option("any", ""));
      for (const v of col.values) {
        if (typeof v === "string" && /[,'"]/.test(v)) continue;  // not expressible in a where clause
        select.append(new Option(String(v), col.kind === "number" ? String(v) : `'${v}'`));
      }
      row.append(select);
    } else if (col.kind === "number") {
      for (const [op, hint] of [[">=", col.min], ["<=", col.max]]) {
        const input = document.createElement("input");
        input.type = "number";
        input.step = "any";
        input.placeholder = `${op} ${hint}`;
        input.dataset.column = name;
        input.dataset.op = op;
        input.setAttribute("aria-label", `${name} ${op}`);
        row.append(input);
      }
    } else {
      return null;  // many free-text values: the "more" box takes them
    }
    return row;
  }

  function whereClause() {
    const parts = [];
    for (const el of $("filter-columns").querySelectorAll("[data-column]")) {
      const value = el.value.trim();
      if (!value) continue;
      if (el.dataset.op && !NUMBER.test(value)) continue;
      parts.push(`${el.dataset.column}${el.dataset.op || "="}${value}`);
    }
    const extra = $("where").value.trim();
    if (extra) parts.push(extra);
    return parts.join(", ");
  }

  async function loadIndex() {
    try {
      const info = await api("/v1/index");
      $("index-info").textContent = `index ${info.name} · ${info.images} images · model ${info.model_version}` +
        ` · perceptual ${info.perceptual}`;
      $("k").max = info.limits.max_k;
      $("steps").max = info.limits.max_steps;
      $("steps").placeholder = String(info.default_steps);
      const box = $("filter-columns");
      box.replaceChildren();
      for (const [name, col] of Object.entries(info.label_columns)) {
        const control = filterControl(name, col);
        if (control) box.append(control);
      }
    } catch (err) {
      $("index-info").textContent = `index unavailable: ${err.message}`;
    }
  }

  // ---- search and results --------------------------------------------------------------------------------
  function options() {
    const body = { k: Number($("k").value) || 12, alpha: Number($("alpha").value), include_images: true };
    const where = whereClause();
    if (where) body.where = where;
    return body;
  }

  async function run(body, what) {
    if (state.busy) return;
    state.busy = true;
    $("search").disabled = true;
    say(`Searching ${what}…`);
    try {
      show(await api("/v1/retrieve", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      }), what);
    } catch (err) {
      say(err.message, true);
    } finally {
      state.busy = false;
      $("search").disabled = false;
    }
  }

  function searchSketch() {
    const body = Object.assign({ sketch: canvas.toDataURL("image/png") }, options());
    if ($("steps").value !== "") body.steps = Number($("steps").value);
    run(body, "for the sketch");
  }

  function moreLike(hit) {
    run(Object.assign({ like: hit.id }, options()), `like image ${hit.id}`);
  }

  function fmt(v) {
    return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : String(v);
  }

  function card(hit) {
    const li = document.createElement("li");
    li.className = "card";
    li.dataset.id = hit.id;
    const button = document.createElement("button");
    button.type = "button";
    const img = document.createElement("img");
    img.src = hit.thumb;
    img.alt = `result ${hit.rank}: ${hit.file}`;
    const head = document.createElement("div");
    head.className = "score";
    head.textContent = `#${hit.rank} · score ${hit.score.toFixed(3)}`;
    const dist = document.createElement("div");
    dist.className = "dist";
    dist.textContent = `latent ${fmt(hit.latent_distance)} · perceptual ` +
      (hit.perceptual_distance === null ? "–" : fmt(hit.perceptual_distance));
    const meta = document.createElement("dl");
    const labels = Object.entries(hit.labels).filter(([key]) => key !== "id");
    button.title = "More like this\n" + labels.map(([key, value]) => `${key}: ${fmt(value)}`).join("\n");
    for (const [key, value] of labels.slice(0, SHOWN_LABELS)) {
      const dt = document.createElement("dt");
      dt.textContent = key.replace(/_/g, " ");
      const dd = document.createElement("dd");
      dd.textContent = fmt(value);
      meta.append(dt, dd);
    }
    const name = document.createElement("div");
    name.className = "file";
    name.textContent = hit.file;
    button.append(img, head, dist, name, meta);
    button.addEventListener("click", () => moreLike(hit));
    li.append(button);
    return li;
  }

  function show(result, what) {
    const p = result.provenance;
    const view = $("query-view");
    view.hidden = false;
    if (result.x_hat) {
      $("query-image").src = result.x_hat;
      $("query-image").alt = "generated image x̂";
      $("query-caption").textContent = `x̂ — what the model makes of the sketch (T=${p.steps})`;
    } else {
      $("query-image").src = result.query_image;
      $("query-image").alt = `query image ${p.like}`;
      $("query-caption").textContent = `query: image ${p.like}`;
    }
    $("grid").replaceChildren(...result.hits.map(card));
    const filters = p.where.length ? `, filters ${p.where.join(", ")}` : "";
    say(result.hits.length
      ? `${result.hits.length} results ${what} in ${Math.round(result.timings_ms.total)} ms ` +
        `(${result.candidates} candidates of ${p.index_size}${filters}). Click a result for more like it.`
      : `No image matches${filters}.`);
  }

  $("search").addEventListener("click", searchSketch);
  $("alpha").addEventListener("input", () => { $("alpha-value").textContent = $("alpha").value; });

  redraw();
  loadIndex();
})();
