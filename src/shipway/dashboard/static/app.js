// shipway dashboard: a small single-page app over the JSON API (/api/v1), no build step.
//
// Views are chosen by the URL fragment: #/queue, #/jobs, #/jobs/<id>, #/deployments,
// #/deployments/<id>, #/deployments/<id>/versions/<id>, #/failures. The API token is
// kept in localStorage; /dashboard#token=<secret> stores it and drops it from the URL.
// Every call sends it as `Authorization: Bearer`, including the job event stream,
// which is read with fetch() streaming (EventSource cannot send headers).
// Data is only ever put in the page as text (textContent), never as markup.
"use strict";

(() => {
  const API = "/api/v1";
  const TOKEN_KEY = "shipway.token";
  const POLL_MS = 2000;
  const ROLLOUT_KINDS = new Set(["promote", "rollback"]);
  const ENDED = new Set(["succeeded", "failed", "cancelled"]);

  // ------------------------------------------------------------------ DOM helpers

  /** el("td", {class: "x", testid: "y", onclick: fn}, child, ...): build an element. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "testid") node.dataset.testid = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const link = (href, text, attrs) => el("a", { href, ...(attrs || {}) }, text);
  const badge = (text, attrs) =>
    el("span", { class: `badge ${text || ""}`, ...(attrs || {}) }, text || "—");
  const empty = (text) => el("div", { class: "empty" }, text);

  function table(headers, rows, attrs) {
    if (!rows.length) return empty((attrs && attrs.emptyText) || "none");
    const { emptyText, ...rest } = attrs || {};
    return el(
      "table",
      rest,
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows),
    );
  }

  function kv(pairs, attrs) {
    return el(
      "dl",
      { class: "kv", ...(attrs || {}) },
      pairs.filter(Boolean).map(([k, v, testid]) => [el("dt", {}, k), el("dd", { testid }, v ?? "—")]),
    );
  }

  // ------------------------------------------------------------------ formatting

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.max(0, Number(seconds));
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  const parseTime = (iso) => (iso ? Date.parse(iso) : NaN);
  const secondsSince = (iso) => (iso ? (Date.now() - parseTime(iso)) / 1000 : null);

  function when(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    return el("time", { datetime: iso, title: iso }, date.toLocaleString());
  }

  const pct = (value) => (value === null || value === undefined ? "—" : `${(value * 100).toFixed(2)}%`);
  const ms = (value) => (value === null || value === undefined ? "—" : `${Math.round(value)} ms`);
  const short = (id) => (id ? String(id) : "—");

  // ------------------------------------------------------------------ token and API

  const token = {
    get: () => localStorage.getItem(TOKEN_KEY),
    set: (value) => localStorage.setItem(TOKEN_KEY, value),
    clear: () => localStorage.removeItem(TOKEN_KEY),
  };

  /** `#token=<secret>[&view=...]`: remember the token, then continue without it in the URL. */
  function takeTokenFromFragment() {
    const hash = location.hash.replace(/^#/, "");
    if (!hash.startsWith("token=")) return;
    const params = new URLSearchParams(hash);
    const secret = params.get("token");
    if (secret) token.set(secret.trim());
    const next = params.get("view") || "/queue";
    history.replaceState(null, "", `${location.pathname}${location.search}#${next}`);
  }

  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.details = details || {};
    }
  }

  function authHeaders(extra) {
    const headers = { ...(extra || {}) };
    const secret = token.get();
    if (secret) headers.Authorization = `Bearer ${secret}`;
    return headers;
  }

  async function failure(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      /* not JSON */
    }
    const error = (body && body.error) || {};
    const problem = new ApiError(
      response.status,
      error.code || `http_${response.status}`,
      error.message || response.statusText || "request failed",
      error.details,
    );
    if (response.status === 401) needToken(problem.message);
    return problem;
  }

  /** A JSON API call; throws ApiError with the API's error code and message. */
  async function api(path, options) {
    const { method = "GET", body, signal } = options || {};
    const headers = authHeaders({ Accept: "application/json" });
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(API + path, {
      method,
      headers,
      signal,
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) throw await failure(response);
    return response.json();
  }

  /** A plain-text API call (the build log). */
  async function apiText(path, signal) {
    const response = await fetch(API + path, { headers: authHeaders(), signal, cache: "no-store" });
    if (!response.ok) throw await failure(response);
    return response.text();
  }

  /** Read a streamed text response chunk by chunk (fetch streaming, with the bearer header). */
  async function readStream(path, { headers, signal, onChunk }) {
    const response = await fetch(API + path, {
      headers: authHeaders(headers),
      signal,
      cache: "no-store",
    });
    if (!response.ok) throw await failure(response);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      onChunk(decoder.decode(value, { stream: true }));
    }
    onChunk(decoder.decode());
  }

  /**
   * Follow GET /jobs/{id}/events (server-sent events) until its `end` event, reconnecting
   * with Last-Event-ID if the connection drops. onEvent(type, data) for each message.
   */
  async function followJobEvents(jobId, { signal, onEvent, onStatus }) {
    let lastId = null;
    let ended = false;
    while (!ended && !signal.aborted) {
      let buffer = "";
      let message = { event: "message", data: [], id: null };
      const dispatch = () => {
        if (message.id !== null) lastId = message.id;
        if (message.data.length) {
          let data = null;
          try {
            data = JSON.parse(message.data.join("\n"));
          } catch (_) {
            data = message.data.join("\n");
          }
          if (message.event === "end") ended = true;
          onEvent(message.event, data);
        }
        message = { event: "message", data: [], id: null };
      };
      try {
        onStatus("connecting");
        await readStream(`/jobs/${encodeURIComponent(jobId)}/events`, {
          headers: { Accept: "text/event-stream", ...(lastId ? { "Last-Event-ID": lastId } : {}) },
          signal,
          onChunk(text) {
            onStatus("live");
            buffer += text;
            let newline;
            while ((newline = buffer.indexOf("\n")) >= 0) {
              const line = buffer.slice(0, newline).replace(/\r$/, "");
              buffer = buffer.slice(newline + 1);
              if (line === "") dispatch();
              else if (line.startsWith(":")) continue; // keep-alive comment
              else {
                const colon = line.indexOf(":");
                const field = colon < 0 ? line : line.slice(0, colon);
                const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
                if (field === "event") message.event = value;
                else if (field === "data") message.data.push(value);
                else if (field === "id") message.id = value;
              }
            }
          },
        });
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && error.status < 500) {
          onStatus(`stream refused: ${error.message}`);
          return;
        }
      }
      if (!ended && !signal.aborted) {
        onStatus("reconnecting");
        await sleep(1000, signal);
      }
    }
    if (ended) onStatus("ended");
  }

  const sleep = (millis, signal) =>
    new Promise((resolve) => {
      const timer = setTimeout(resolve, millis);
      if (signal) signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
    });

  // ------------------------------------------------------------------ view lifecycle

  const main = () => document.querySelector("main");
  let view = null; // {controller: AbortController} of the view on screen

  function startView() {
    if (view) view.controller.abort();
    view = { controller: new AbortController() };
    return view;
  }

  /** Run refresh() now and every POLL_MS until the view changes (never two at once). */
  function poll(current, refresh, millis) {
    const { signal } = current.controller;
    (async () => {
      while (!signal.aborted) {
        try {
          await refresh(signal);
          markLive(true);
        } catch (error) {
          if (signal.aborted) return;
          markLive(false);
          showError(error);
        }
        await sleep(millis || POLL_MS, signal);
      }
    })();
  }

  function markLive(fresh, text) {
    const live = document.querySelector("[data-testid=live]");
    if (!live) return;
    live.textContent = text || `updated ${new Date().toLocaleTimeString()}`;
    live.classList.toggle("stale", !fresh);
  }

  function showError(error) {
    if (error instanceof ApiError && error.status === 401) return; // the token form is shown
    const box = document.querySelector("[data-testid=error]") || el("div", { testid: "error" });
    box.className = "notice error";
    box.textContent = error instanceof ApiError ? `${error.code}: ${error.message}` : String(error);
    if (!box.isConnected) main().prepend(box);
  }

  function clearError() {
    const box = document.querySelector("[data-testid=error]");
    if (box) box.remove();
  }

  /**
   * Replace the content of the element with testid ``id`` inside ``root`` — unless it
   * would look the same: then the nodes on screen stay (a button being clicked, a
   * scrolled log or a text selection survive the refresh).
   */
  function fill(root, id, ...children) {
    const target = root.querySelector(`[data-testid="${id}"]`);
    if (!target) return target;
    const next = append(document.createElement("div"), children);
    if (next.innerHTML !== target.innerHTML) target.replaceChildren(...next.childNodes);
    return target;
  }

  const openDetails = new Set(); // <details> the user opened, kept open across refreshes

  function details(key, summary, ...content) {
    return el(
      "details",
      {
        open: openDetails.has(key),
        ontoggle(event) {
          if (event.currentTarget.open) openDetails.add(key);
          else openDetails.delete(key);
        },
      },
      el("summary", {}, summary),
      content,
    );
  }

  function needToken(message) {
    if (view) view.controller.abort();
    view = null;
    const input = el("input", {
      type: "password",
      name: "token",
      testid: "token-input",
      placeholder: "shw_…",
      autocomplete: "off",
      required: true,
    });
    const form = el(
      "form",
      {
        class: "token panel",
        testid: "token-form",
        onsubmit(event) {
          event.preventDefault();
          token.set(input.value.trim());
          render();
        },
      },
      el("h1", {}, "API token"),
      message ? el("div", { class: "notice error" }, message) : null,
      el(
        "p",
        {},
        "The dashboard calls the shipway API with your token (the same tokens as the API and ",
        "CLI: ",
        el("code", {}, "shipway tokens create --workspace W --scope deployments:write"),
        "; an ",
        el("code", {}, "admin"),
        " token also lists every worker). It is kept in this browser's localStorage only.",
      ),
      input,
      el("button", { type: "submit", testid: "token-submit" }, "Open dashboard"),
    );
    main().replaceChildren(form);
    signOutButton().hidden = true;
    input.focus();
  }

  const signOutButton = () => document.querySelector("[data-testid=sign-out]");

  // ------------------------------------------------------------------ shared pieces

  function jobLink(id) {
    return id ? link(`#/jobs/${encodeURIComponent(id)}`, short(id), { class: "mono" }) : "—";
  }

  // Names of deployments ("shop") and versions ("v3"), asked once per id and shown
  // instead of ids wherever a link has no text of its own (the id stays in the tooltip).
  const names = new Map();
  const asked = new Set();

  function nameOf(id, path, label) {
    if (names.has(id)) return names.get(id);
    if (!asked.has(id)) {
      asked.add(id);
      api(path)
        .then((row) => {
          names.set(id, label(row));
          for (const node of document.querySelectorAll("[data-name-of]")) {
            if (node.dataset.nameOf === id) node.textContent = names.get(id);
          }
        })
        .catch(() => asked.delete(id)); // asked again at the next render
    }
    return null;
  }

  function namedLink(href, id, text, lookup) {
    if (text) return link(href, text);
    return link(href, lookup() || id, { title: id, dataset: { nameOf: id } });
  }

  function versionLink(deploymentId, versionId, text) {
    if (!deploymentId || !versionId) return text || "—";
    const href = `#/deployments/${encodeURIComponent(deploymentId)}/versions/${encodeURIComponent(versionId)}`;
    return namedLink(href, versionId, text, () =>
      nameOf(versionId, `/versions/${encodeURIComponent(versionId)}`, (v) => `v${v.version_number}`),
    );
  }

  function deploymentLink(id, text) {
    if (!id) return "—";
    return namedLink(`#/deployments/${encodeURIComponent(id)}`, id, text, () =>
      nameOf(id, `/deployments/${encodeURIComponent(id)}`, (d) => d.name),
    );
  }

  /** A failure's diagnosis: title, description, what to do, and the evidence. */
  function diagnostics(reason, diag, testid) {
    if (!reason && !diag) return null;
    const d = diag || {};
    return el(
      "div",
      { class: "diagnostics", testid: testid || "diagnostics" },
      el("div", { class: "title", testid: "failure-title" }, d.title || reason),
      el("div", { class: "small muted" }, "failure_reason: ", el("code", { testid: "failure-reason" }, reason || "—")),
      d.description ? el("div", { class: "description", testid: "failure-description" }, d.description) : null,
      d.action ? el("div", { class: "action", testid: "failure-action" }, d.action) : null,
      d.evidence && Object.keys(d.evidence).length
        ? details(
            `${testid}:${reason}`,
            "evidence",
            el("pre", { class: "json", testid: "failure-evidence" }, JSON.stringify(d.evidence, null, 2)),
          )
        : null,
    );
  }

  /** The canary of a rollout: weight bar, step, state, and the analysis results table. */
  function canaryPanel(canary, strategy, attrs) {
    const steps = (strategy && strategy.type === "canary" && strategy.steps) || [];
    if (!canary && !steps.length) return null;
    const c = canary || {};
    const weight = Number(c.weight || 0);
    const stepCount = c.step_count ?? steps.length;
    const stepIndex = c.step_index;
    const stateName = c.state || (canary ? "analysing" : "waiting");
    const canaryBar = el("div", { class: "canary", testid: "canary-bar" }, weight ? `canary ${weight}%` : "");
    canaryBar.style.width = `${Math.min(100, Math.max(0, weight))}%`;
    const bar = el(
      "div",
      { class: "weightbar", testid: "canary-weightbar", dataset: { weight: String(weight) } },
      canaryBar,
      el("div", { class: "stable" }, `stable ${100 - weight}%`),
    );
    for (const step of steps) {
      const tick = el("div", { class: "tick", title: `step at ${step.weight}%` });
      tick.style.left = `${step.weight}%`;
      bar.append(tick);
    }
    const analyses = Array.isArray(c.analyses) ? c.analyses : c.last_analysis ? [c.last_analysis] : [];
    const latency = (a) => (a.p95_latency_ms !== undefined && a.p95_latency_ms !== null ? `${ms(a.p95_latency_ms)} p95` : a.avg_latency_ms !== undefined && a.avg_latency_ms !== null ? `${ms(a.avg_latency_ms)} avg` : "—");
    const rows = analyses
      .slice()
      .reverse()
      .map((a) =>
        el(
          "tr",
          { class: a.verdict === "fail" ? "verdict-fail" : "" },
          el("td", {}, a.at ? new Date(a.at).toLocaleTimeString() : "—"),
          el("td", {}, a.step_index === undefined || a.step_index === null ? "—" : String(a.step_index + 1)),
          el("td", {}, a.weight === undefined ? "—" : `${a.weight}%`),
          el("td", {}, a.requests ?? "—"),
          el("td", {}, a.errors_5xx ?? "—"),
          el("td", {}, pct(a.error_rate)),
          el("td", {}, latency(a)),
          el("td", {}, badge(a.verdict)),
          el("td", {}, (a.reasons || []).join("; ")),
        ),
      );
    return el(
      "div",
      { class: `panel rollout ${stateName}`, testid: "rollout-panel", ...(attrs || {}) },
      el(
        "h3",
        {},
        "Canary ",
        badge(stateName, { testid: "canary-state" }),
        c.paused ? [" ", badge("paused")] : null,
      ),
      kv([
        ["weight", `${weight}%`, "canary-weight"],
        [
          "step",
          stepIndex === undefined || stepIndex === null ? "—" : `${Math.min(stepIndex + 1, stepCount || stepIndex + 1)} of ${stepCount ?? "?"}`,
          "canary-step",
        ],
        steps.length ? ["steps", steps.map((s) => `${s.weight}%`).join(" → ") + " → 100%"] : null,
      ]),
      bar,
      el("h4", {}, "Analysis"),
      table(["at", "step", "weight", "requests", "5xx", "error rate", "latency", "verdict", "reasons"], rows, {
        testid: "canary-analyses",
        emptyText: "no analysis yet",
      }),
    );
  }

  // ------------------------------------------------------------------ Queue view

  function renderQueue() {
    const current = startView();
    const root = el(
      "section",
      { testid: "view-queue" },
      el("h1", {}, "Queue and workers"),
      el("div", { class: "cards", testid: "queues" }),
      el("h2", {}, "Stuck jobs"),
      el("div", { testid: "stuck" }),
      el("h2", {}, "Rollouts"),
      el("div", { testid: "rollouts" }),
      el("h2", {}, "Running jobs"),
      el("div", { testid: "running" }),
      el("h2", {}, "Workers"),
      el("div", { testid: "workers" }),
      el("h2", {}, "Failures in the last hour"),
      el("div", { testid: "failures" }),
      el("h2", {}, "Certificates needing attention"),
      el("div", { testid: "certificates" }),
    );
    main().replaceChildren(root);
    poll(current, async (signal) => {
      const [q, recent] = await Promise.all([api("/queue", { signal }), recentRollouts(signal)]);
      if (signal.aborted) return;
      clearError();
      drawQueue(root, q, recent);
    });
  }

  // Free space of the data directory (docs/storage.md): low is a warning, exhausted means
  // publishes answer 507 until space is freed.
  function storageCard(storage) {
    if (!storage) return null;
    const mib = (n) => `${(n / 1048576).toFixed(1)} MiB`;
    const state = storage.exhausted ? "exhausted" : storage.low ? "low" : "ok";
    const note = {
      ok: "free in the data directory",
      low: `free: low, below ${mib(storage.min_free_bytes)}`,
      exhausted: "free: exhausted, publishes answer 507",
    }[state];
    return el(
      "div",
      { class: `card storage ${state}`, testid: "storage", dataset: { state } },
      el("div", { class: "label" }, "storage"),
      el("div", { class: "num" }, mib(storage.free_bytes)),
      el("div", { class: "label" }, `${note} (of ${mib(storage.total_bytes)})`),
    );
  }

  async function recentRollouts(signal) {
    const pages = await Promise.all(
      [...ROLLOUT_KINDS].map((kind) => api(`/jobs?kind=${kind}&limit=5`, { signal })),
    );
    return pages
      .flatMap((p) => p.data)
      .sort((a, b) => parseTime(b.created_at) - parseTime(a.created_at))
      .slice(0, 5);
  }

  function drawQueue(root, q, recent) {
    fill(
      root,
      "queues",
      q.queues.map((s) =>
        el(
          "div",
          { class: "card", testid: `queue-${s.name}`, dataset: { depth: String(s.depth) } },
          el("div", { class: "label" }, `queue ${s.name}`),
          el("div", { class: "num", testid: `queue-depth-${s.name}` }, String(s.depth)),
          el("div", { class: "label" }, `queued · ${s.delayed} delayed · ${s.running} running`),
          el("div", { class: "label" }, "oldest queued: ", age(s.oldest_queued_age_seconds), s.oldest_job_id ? [" ", jobLink(s.oldest_job_id)] : null),
        ),
      ),
      el(
        "div",
        { class: "card", testid: "workers-summary" },
        el("div", { class: "label" }, "workers"),
        el("div", { class: "num" }, String(q.workers_summary.alive)),
        el("div", { class: "label" }, `alive · ${q.workers_summary.dead} dead in the last hour`),
      ),
      storageCard(q.storage),
    );

    const stuckIds = new Set(q.stuck.map((s) => s.id));
    fill(
      root,
      "stuck",
      table(
        ["job", "kind", "state", "phase", "reason", "stuck for", "attempts", "lease owner", "deployment"],
        q.stuck.map((s) =>
          el(
            "tr",
            { class: "stuck", testid: `stuck-${s.id}`, title: `stuck since ${s.stuck_since}` },
            el("td", {}, jobLink(s.id)),
            el("td", {}, s.kind),
            el("td", {}, badge(s.state)),
            el("td", {}, s.phase || "—"),
            el("td", {}, badge("stuck"), " ", el("code", { testid: "stuck-reason" }, s.stuck_reason)),
            el("td", {}, age(s.stuck_for_seconds)),
            el("td", {}, `${s.attempts}/${s.max_attempts}`),
            el("td", { class: "mono small" }, s.lease_owner || "—"),
            el("td", {}, deploymentLink(s.deployment_id), s.environment ? ` / ${s.environment}` : ""),
          ),
        ),
        { testid: "stuck-jobs", emptyText: `nothing stuck (stuck after ${q.stuck_after_seconds}s)` },
      ),
    );

    const lines = q.rollouts.map((line) =>
      el(
        "tr",
        { testid: `rollout-line-${line.serial_key}` },
        el("td", {}, deploymentLink(line.deployment_id), line.environment ? ` / ${line.environment}` : ""),
        el("td", {}, line.running ? [jobLink(line.running.id), " ", badge(line.running.state)] : "—"),
        el(
          "td",
          {},
          line.waiting.length
            ? line.waiting.map((w) => el("div", {}, `#${w.position ?? "?"} `, jobLink(w.id), ` ${w.kind}, waiting ${age(w.age_seconds)}`))
            : "—",
        ),
      ),
    );
    fill(
      root,
      "rollouts",
      recent.filter((job) => !ENDED.has(job.state) || secondsSince(job.finished_at) < 3600).map((job) => rolloutCard(job)),
      table(["deployment / environment", "running", "waiting (position)"], lines, {
        testid: "rollout-lines",
        emptyText: "no rollout running or waiting",
      }),
    );

    const running = q.running.flatMap((group) => group.jobs);
    fill(
      root,
      "running",
      table(
        ["job", "kind", "phase", "elapsed", "attempt", "worker", "deployment", "progress"],
        running.map((j) =>
          el(
            "tr",
            { class: stuckIds.has(j.id) ? "stuck" : "", testid: `running-${j.id}` },
            el("td", {}, jobLink(j.id)),
            el("td", {}, j.kind),
            el("td", {}, badge(j.phase || "starting")),
            el("td", {}, age(j.elapsed_seconds)),
            el("td", {}, String(j.attempt)),
            el(
              "td",
              {},
              j.worker
                ? [badge(j.worker.alive ? "alive" : "dead"), ` ${j.worker.hostname}/${j.worker.pid} · heartbeat ${age(j.worker.heartbeat_age_seconds)} ago`]
                : el("span", { class: "mono small" }, j.lease_owner || "—"),
            ),
            el("td", {}, deploymentLink(j.deployment_id), j.environment ? ` / ${j.environment}` : ""),
            el("td", { class: "mono small" }, progressText(j.progress)),
          ),
        ),
        { testid: "running-jobs", emptyText: "no job running" },
      ),
    );

    fill(
      root,
      "workers",
      q.workers === null
        ? el(
            "div",
            { class: "muted" },
            `${q.workers_summary.alive} alive, ${q.workers_summary.dead} dead (an admin token lists each worker)`,
          )
        : table(
            ["worker", "node", "queues", "state", "heartbeat", "current job", "started"],
            q.workers.map((w) =>
              el(
                "tr",
                { class: w.alive ? "" : "bad", testid: `worker-${w.id}` },
                el("td", { class: "mono" }, `${w.hostname}/${w.pid}`),
                el("td", {}, w.node || "—"),
                el("td", {}, w.queues.join(", ")),
                el("td", {}, badge(w.alive ? "alive" : "dead"), w.stopped_at ? " stopped" : "", w.busy ? " busy" : ""),
                el("td", {}, `${age(w.heartbeat_age_seconds)} ago`),
                el("td", {}, jobLink(w.current_job_id)),
                el("td", {}, when(w.started_at)),
              ),
            ),
            { testid: "workers-table", emptyText: "no worker seen in the last hour" },
          ),
    );

    fill(
      root,
      "failures",
      table(
        ["reason", "count", "latest job", "at"],
        q.failures_last_hour.map((f) =>
          el(
            "tr",
            { testid: `failure-${f.failure_reason}` },
            el("td", {}, el("code", {}, f.failure_reason)),
            el("td", {}, String(f.count)),
            el("td", {}, jobLink(f.latest_job_id)),
            el("td", {}, when(f.latest_finished_at)),
          ),
        ),
        { testid: "failures-table", emptyText: "no failure in the last hour" },
      ),
    );

    fill(
      root,
      "certificates",
      table(
        ["hostname", "deployment", "why", "status", "reason", "what to do", "expires", "next attempt"],
        (q.certificates || []).map((c) =>
          el(
            "tr",
            { class: c.certificate.status === "failed" ? "bad" : "", testid: `certificate-${c.hostname}` },
            el("td", { class: "mono" }, c.hostname),
            el("td", {}, deploymentLink(c.deployment_id), ` / ${c.environment}`),
            el("td", {}, badge(c.why)),
            el("td", {}, badge(c.certificate.status)),
            el("td", {}, c.certificate.failure_reason ? el("code", {}, c.certificate.failure_reason) : "—"),
            el("td", { class: "small" }, (c.certificate.failure_diagnostics || {}).action || "—"),
            el("td", {}, when(c.certificate.not_after)),
            el("td", {}, when(c.certificate.next_attempt_at)),
          ),
        ),
        { testid: "certificates-table", emptyText: "every certificate is fine" },
      ),
    );
  }

  function progressText(progress) {
    const { canary, ...rest } = progress || {};
    const parts = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
    if (canary) parts.unshift(`canary ${canary.weight ?? 0}% (${canary.state || "?"})`);
    return parts.join(" ") || "—";
  }

  /** A rollout job as a card: its state and, for a canary, the live weight and analyses. */
  function rolloutCard(job) {
    const canary = (job.progress || {}).canary || null;
    return el(
      "div",
      { class: "panel", testid: `rollout-${job.id}` },
      el(
        "div",
        {},
        el("strong", {}, job.kind),
        " ",
        jobLink(job.id),
        " ",
        badge(job.state),
        job.phase ? [" phase ", badge(job.phase)] : null,
        " — ",
        deploymentLink(job.deployment_id),
        job.environment ? ` / ${job.environment}` : "",
        job.version_id ? [" — version ", versionLink(job.deployment_id, job.version_id)] : null,
      ),
      canary ? canaryPanel(canary, null) : null,
      job.failure_reason ? diagnostics(job.failure_reason, job.failure_diagnostics, "rollout-failure") : null,
    );
  }

  // ------------------------------------------------------------------ Jobs list

  function renderJobs(params) {
    const current = startView();
    const state = params.get("state") || "";
    const kind = params.get("kind") || "";
    const select = (name, value, options) =>
      el(
        "select",
        {
          name,
          testid: `filter-${name}`,
          onchange(event) {
            const next = new URLSearchParams(params);
            if (event.target.value) next.set(name, event.target.value);
            else next.delete(name);
            location.hash = `#/jobs?${next}`;
          },
        },
        options.map((o) => el("option", { value: o, selected: o === value }, o || `any ${name}`)),
      );
    const root = el(
      "section",
      { testid: "view-jobs" },
      el("h1", {}, "Jobs"),
      el(
        "div",
        { class: "filters" },
        select("state", state, ["", "queued", "running", "succeeded", "failed", "cancelled"]),
        select("kind", kind, ["", "publish", "promote", "rollback", "retire", "noop"]),
      ),
      el("div", { testid: "jobs" }),
    );
    main().replaceChildren(root);
    const query = new URLSearchParams({ limit: "100" });
    if (state) query.set("state", state);
    if (kind) query.set("kind", kind);
    poll(current, async (signal) => {
      const page = await api(`/jobs?${query}`, { signal });
      if (signal.aborted) return;
      clearError();
      fill(
        root,
        "jobs",
        table(
          ["job", "kind", "state", "phase", "deployment", "environment", "created", "took / elapsed", "failure"],
          page.data.map((j) =>
            el(
              "tr",
              { testid: `job-${j.id}`, class: j.state === "failed" ? "bad" : "" },
              el("td", {}, jobLink(j.id)),
              el("td", {}, j.kind),
              el("td", {}, badge(j.state), j.queue_position ? ` #${j.queue_position}` : ""),
              el("td", {}, j.phase || "—"),
              el("td", {}, deploymentLink(j.deployment_id)),
              el("td", {}, j.environment || "—"),
              el("td", {}, when(j.created_at)),
              el("td", {}, duration(j)),
              el("td", {}, j.failure_reason ? el("code", {}, j.failure_reason) : ""),
            ),
          ),
          { testid: "jobs-table", emptyText: "no job" },
        ),
      );
    });
  }

  function duration(job) {
    if (!job.started_at) return "—";
    const end = job.finished_at ? parseTime(job.finished_at) : Date.now();
    return age((end - parseTime(job.started_at)) / 1000);
  }

  // ------------------------------------------------------------------ Job page

  function renderJob(jobId) {
    const current = startView();
    const { signal } = current.controller;
    const state = { job: null, events: new Map(), log: [], release: null, streamStatus: "" };
    const root = el(
      "section",
      { testid: "view-job" },
      el("h1", {}, "Job ", el("span", { class: "mono" }, jobId)),
      el("div", { testid: "job-summary" }),
      el("div", { class: "actions", testid: "job-actions" }),
      el("div", { testid: "job-failure" }),
      el("div", { testid: "job-rollout" }),
      el("h2", {}, "Phase timeline"),
      el("div", { testid: "phase-timeline" }),
      el("h2", {}, "Progress"),
      el("pre", { class: "json", testid: "job-progress" }),
      el("div", { testid: "job-log-section" }),
      el("h2", {}, "Events"),
      el("div", { testid: "job-events" }),
    );
    main().replaceChildren(root);

    let scheduled = false;
    const redraw = () => {
      if (scheduled) return;
      scheduled = true;
      requestAnimationFrame(() => {
        scheduled = false;
        if (!signal.aborted && state.job) drawJob(root, state, reload);
      });
    };

    async function reload() {
      try {
        state.job = await api(`/jobs/${encodeURIComponent(jobId)}`, { signal });
        if (ROLLOUT_KINDS.has(state.job.kind) && state.job.deployment_id && state.job.version_id) {
          const version = await api(
            `/deployments/${encodeURIComponent(state.job.deployment_id)}/versions/${encodeURIComponent(state.job.version_id)}`,
            { signal },
          );
          state.release = (version.releases || []).find((r) => r.id === state.job.release_id) || null;
        }
        clearError();
        markLive(true, `updated ${new Date().toLocaleTimeString()} · stream ${state.streamStatus || "…"}`);
        redraw();
      } catch (error) {
        if (!signal.aborted) showError(error);
      }
    }

    let pending = null;
    const reloadSoon = () => {
      if (pending) return;
      pending = setTimeout(async () => {
        pending = null;
        await reload();
      }, 150);
    };

    (async () => {
      await reload();
      if (!state.job) return;
      // The release's rollout (strategy, canary) is not in the stream: refresh it while running.
      poll(current, async () => {
        if (state.job && !ENDED.has(state.job.state) && ROLLOUT_KINDS.has(state.job.kind)) await reload();
      }, 3000);
      await followJobEvents(jobId, {
        signal,
        onStatus(status) {
          state.streamStatus = status;
          const live = document.querySelector("[data-testid=live]");
          if (live) {
            live.textContent = `stream ${status}`;
            live.classList.toggle("stale", status !== "live" && status !== "ended");
          }
          root.dataset.stream = status;
        },
        onEvent(type, data) {
          if (type === "log") {
            state.log.push(data.line);
          } else if (type === "progress") {
            state.job.progress = data.progress || {};
            if (data.phase !== undefined) state.job.phase = data.phase;
          } else if (type === "end") {
            Object.assign(state.job, { state: data.state, failure_reason: data.failure_reason, failure_diagnostics: data.failure_diagnostics, result: data.result });
            reloadSoon();
          } else if (data && typeof data === "object" && "id" in data) {
            state.events.set(data.id, data);
            if (type === "state") state.job.state = data.to_state;
            if (type === "phase") state.job.phase = data.to_state;
            reloadSoon();
          }
          redraw();
        },
      });
    })();
  }

  function drawJob(root, state, reload) {
    const job = state.job;
    const release = state.release;
    const rollout = (release && release.rollout) || {};
    const canary = (job.progress || {}).canary || rollout.canary || null;
    const strategy = rollout.strategy || null;
    const isCanary = ROLLOUT_KINDS.has(job.kind) && (canary || (strategy && strategy.type === "canary"));

    fill(
      root,
      "job-summary",
      el(
        "div",
        { class: "panel" },
        kv([
          ["state", badge(job.state, { testid: "job-state" })],
          ["phase", el("span", { testid: "job-phase" }, job.phase || "—")],
          ["kind", el("span", { testid: "job-kind" }, job.kind)],
          ["queue", `${job.queue}${job.queue_position ? ` — position ${job.queue_position}` : ""}`],
          ["attempts", `${job.attempts} of ${job.max_attempts}`],
          ["deployment", [deploymentLink(job.deployment_id), job.environment ? ` / ${job.environment}` : ""]],
          job.version_id ? ["version", versionLink(job.deployment_id, job.version_id)] : null,
          job.release_id ? ["release", el("span", { class: "mono" }, job.release_id), release ? [" ", badge(release.status)] : null] : null,
          ["created", when(job.created_at)],
          ["started", when(job.started_at)],
          ["finished", when(job.finished_at)],
          ["lease", job.lease_owner ? `${job.lease_owner} (heartbeat ${age(secondsSince(job.heartbeat_at))} ago)` : "—"],
          job.cancel_requested ? ["cancel", "requested"] : null,
          job.paused ? ["paused", "yes (by an operator)"] : null,
          job.control_request ? ["pending request", job.control_request] : null,
          ["actor", job.actor],
          job.result ? ["result", el("code", {}, JSON.stringify(job.result))] : null,
        ]),
      ),
    );

    const running = !ENDED.has(job.state);
    const act = (label, path, testid, options) =>
      el(
        "button",
        {
          type: "button",
          class: (options && options.danger) ? "danger" : "",
          testid,
          async onclick(event) {
            const button = event.currentTarget;
            if (options && options.confirm && !window.confirm(options.confirm)) return;
            button.disabled = true;
            try {
              const answer = await api(`/jobs/${encodeURIComponent(job.id)}/${path}`, { method: "POST" });
              if (answer && answer.id === job.id) Object.assign(job, answer);
              notice(root, `${label}: done`);
            } catch (error) {
              notice(root, `${label} refused: ${error.message}`, true);
            } finally {
              button.disabled = false;
              reload();
            }
          },
        },
        label,
      );
    fill(
      root,
      "job-actions",
      running
        ? [
            act("Cancel", "cancel", "cancel-button", { danger: true, confirm: `Cancel job ${job.id}?` }),
            isCanary
              ? [
                  job.paused || (canary && canary.paused)
                    ? act("Resume", "resume", "resume-button")
                    : act("Pause", "pause", "pause-button"),
                  act("Promote now", "promote-now", "promote-now-button", { confirm: "Skip the remaining canary steps and switch all traffic now?" }),
                  act("Abort", "abort", "abort-button", { danger: true, confirm: "Abort this canary and send all traffic back to the stable version?" }),
                ]
              : null,
          ]
        : null,
    );

    fill(root, "job-failure", diagnostics(job.failure_reason, job.failure_diagnostics, "job-diagnostics"));
    fill(root, "job-rollout", isCanary ? canaryPanel(canary, strategy) : null);
    fill(root, "phase-timeline", timeline(job, [...state.events.values()]));
    const { canary: _hidden, ...progress } = job.progress || {};
    fill(root, "job-progress", JSON.stringify(progress, null, 2));

    if (job.kind === "publish") {
      const section = fill(
        root,
        "job-log-section",
        el("h2", {}, "Build log"),
        el("pre", { class: "log", testid: "job-log" }, state.log.join("\n") || "(nothing yet)"),
      );
      const pre = section && section.querySelector("pre");
      if (pre) pre.scrollTop = pre.scrollHeight;
    }

    const events = [...state.events.values()].sort((a, b) => a.id - b.id);
    fill(
      root,
      "job-events",
      table(
        ["#", "at", "subject", "from → to", "reason", "actor"],
        events.map((e) =>
          el(
            "tr",
            {},
            el("td", {}, String(e.id)),
            el("td", {}, when(e.created_at)),
            el("td", {}, e.subject_type),
            el("td", {}, `${e.from_state ?? "∅"} → ${e.to_state ?? "∅"}`),
            el("td", {}, e.reason),
            el("td", { class: "mono small" }, e.actor),
          ),
        ),
        { testid: "job-events-table", emptyText: "no event yet" },
      ),
    );
  }

  /** Phases as bars on one time axis: each from its event to the next phase or the end. */
  function timeline(job, events) {
    const phases = events
      .filter((e) => e.subject_type === "job_phase")
      .sort((a, b) => a.id - b.id);
    const terminal = events.find((e) => e.subject_type === "job" && ENDED.has(e.to_state));
    const origin = parseTime(job.started_at || job.created_at);
    const endAt = job.finished_at ? parseTime(job.finished_at) : terminal ? parseTime(terminal.created_at) : Date.now();
    if (!phases.length) {
      return empty(job.state === "queued" ? "queued: no phase yet" : "no phase recorded");
    }
    const start0 = Math.min(origin, parseTime(phases[0].created_at));
    const span = Math.max(1, endAt - start0);
    return el(
      "div",
      { class: "timeline" },
      phases.map((p, i) => {
        const from = parseTime(p.created_at);
        const to = i + 1 < phases.length ? parseTime(phases[i + 1].created_at) : endAt;
        const isCurrent = i + 1 === phases.length && !ENDED.has(job.state);
        const failed = i + 1 === phases.length && job.state === "failed";
        const bar = el("div", { class: "bar" });
        bar.style.left = `${((from - start0) / span) * 100}%`;
        bar.style.width = `${Math.max(0.5, ((to - from) / span) * 100)}%`;
        return el(
          "div",
          {
            class: `row${isCurrent ? " current" : ""}${failed ? " failed" : ""}`,
            testid: `phase-${p.to_state}`,
            title: `${p.to_state}: ${new Date(from).toLocaleTimeString()} → ${isCurrent ? "now" : new Date(to).toLocaleTimeString()}`,
          },
          el("div", { class: "name" }, p.to_state, isCurrent ? " (now)" : ""),
          el("div", { class: "track" }, bar),
          el("div", { class: "small muted" }, age((to - from) / 1000)),
        );
      }),
    );
  }

  function notice(root, text, isError) {
    const box = el("div", { class: `notice${isError ? " error" : ""}`, testid: "action-notice" }, text);
    const old = root.querySelector("[data-testid=action-notice]");
    if (old) old.replaceWith(box);
    else root.querySelector("[data-testid=job-actions]").after(box);
  }

  // ------------------------------------------------------------------ Deployments

  function renderDeployments() {
    const current = startView();
    const root = el("section", { testid: "view-deployments" }, el("h1", {}, "Deployments"), el("div", { testid: "deployments" }));
    main().replaceChildren(root);
    poll(current, async (signal) => {
      const page = await api("/deployments?limit=200", { signal });
      if (signal.aborted) return;
      clearError();
      fill(
        root,
        "deployments",
        table(
          ["deployment", "kind", "replicas", "latest version", "environments"],
          page.data.map((d) =>
            el(
              "tr",
              { testid: `deployment-${d.id}` },
              el("td", {}, deploymentLink(d.id, d.name), el("div", { class: "mono small muted" }, d.id)),
              el("td", {}, d.kind),
              el("td", {}, String(d.replicas)),
              el("td", {}, d.latest_version_number ? `v${d.latest_version_number}` : "—"),
              el(
                "td",
                {},
                d.environments.map((e) =>
                  el("div", {}, `${e.name}: `, e.active_version_number ? `v${e.active_version_number} ` : "nothing active ", e.status ? badge(e.status) : null),
                ),
              ),
            ),
          ),
          { testid: "deployments-table", emptyText: "no deployment yet" },
        ),
      );
    });
  }

  function renderDeployment(deploymentId) {
    const current = startView();
    const root = el(
      "section",
      { testid: "view-deployment" },
      el("h1", { testid: "deployment-title" }, "Deployment ", el("span", { class: "mono" }, deploymentId)),
      el("div", { testid: "deployment-settings" }),
      el("h2", {}, "Environments"),
      el("div", { testid: "environments" }),
      el("h2", {}, "Rollouts"),
      el("div", { testid: "deployment-rollouts" }),
      el("h2", {}, "Versions"),
      el("div", { testid: "versions" }),
      el("h2", {}, "Recent jobs"),
      el("div", { testid: "deployment-jobs" }),
    );
    main().replaceChildren(root);
    const id = encodeURIComponent(deploymentId);
    poll(current, async (signal) => {
      const [d, versions, jobs] = await Promise.all([
        api(`/deployments/${id}`, { signal }),
        api(`/deployments/${id}/versions?limit=50`, { signal }),
        api(`/jobs?deployment_id=${id}&limit=20`, { signal }),
      ]);
      if (signal.aborted) return;
      clearError();
      fill(root, "deployment-title", `Deployment ${d.name} `, el("span", { class: "mono small muted" }, d.id));
      fill(
        root,
        "deployment-settings",
        el(
          "div",
          { class: "panel" },
          kv([
            ["kind", d.kind],
            ["replicas", String(d.replicas)],
            ["port / health check", `${d.runtime_port} ${d.health_check_path}`],
            d.runtime_command ? ["command", el("code", {}, d.runtime_command)] : null,
            ["created", when(d.created_at)],
          ]),
        ),
      );
      const numbers = new Map(versions.data.map((v) => [v.id, v.version_number]));
      fill(
        root,
        "environments",
        table(
          ["environment", "public URL", "active version", "release status", "replicas"],
          d.environments.map((e) =>
            el(
              "tr",
              { testid: `env-${e.name}` },
              el("td", {}, el("strong", {}, e.name)),
              el("td", { testid: "public-url" }, e.public_url ? link(e.public_url, e.public_url, { target: "_blank", rel: "noopener noreferrer" }) : "—"),
              el(
                "td",
                { testid: "active-version" },
                e.active_version_id
                  ? versionLink(d.id, e.active_version_id, `v${e.active_version_number ?? numbers.get(e.active_version_id) ?? "?"}`)
                  : "none",
                e.active_version_id ? el("div", { class: "mono small muted" }, e.active_version_id) : null,
              ),
              el("td", { testid: "release-status" }, e.status ? badge(e.status) : "—"),
              el("td", { testid: "replicas" }, String(e.replicas)),
            ),
          ),
          { testid: "environments-table" },
        ),
      );
      const rollouts = jobs.data.filter((j) => ROLLOUT_KINDS.has(j.kind));
      const shown = rollouts.filter((j) => !ENDED.has(j.state) || (j.progress || {}).canary).slice(0, 3);
      fill(root, "deployment-rollouts", shown.length ? shown.map(rolloutCard) : empty("no rollout running"));
      fill(
        root,
        "versions",
        table(
          ["version", "state", "created", "promoted", "source"],
          versions.data.map((v) =>
            el(
              "tr",
              { testid: `version-${v.id}`, class: v.state === "failed" ? "bad" : "" },
              el("td", {}, versionLink(d.id, v.id, `v${v.version_number}`), el("div", { class: "mono small muted" }, v.id)),
              el("td", {}, badge(v.state)),
              el("td", {}, when(v.created_at)),
              el("td", {}, when(v.promoted_at)),
              el("td", { class: "mono small" }, v.source_sha256 ? v.source_sha256.slice(0, 12) : "—"),
            ),
          ),
          { testid: "versions-table", emptyText: "no version yet" },
        ),
      );
      fill(
        root,
        "deployment-jobs",
        table(
          ["job", "kind", "state", "phase", "environment", "created", "failure"],
          jobs.data.map((j) =>
            el(
              "tr",
              { class: j.state === "failed" ? "bad" : "" },
              el("td", {}, jobLink(j.id)),
              el("td", {}, j.kind),
              el("td", {}, badge(j.state)),
              el("td", {}, j.phase || "—"),
              el("td", {}, j.environment || "—"),
              el("td", {}, when(j.created_at)),
              el("td", {}, j.failure_reason ? el("code", {}, j.failure_reason) : ""),
            ),
          ),
          { emptyText: "no job" },
        ),
      );
    });
  }

  // ------------------------------------------------------------------ Version page

  function renderVersion(deploymentId, versionId) {
    const current = startView();
    const { signal } = current.controller;
    const base = `/deployments/${encodeURIComponent(deploymentId)}/versions/${encodeURIComponent(versionId)}`;
    const root = el(
      "section",
      { testid: "view-version" },
      el("h1", { testid: "version-title" }, "Version ", el("span", { class: "mono" }, versionId)),
      el("div", {}, "← ", deploymentLink(deploymentId, "deployment")),
      el("div", { testid: "version-failure" }),
      el("div", { testid: "version-summary" }),
      el("h2", {}, "Releases"),
      el("div", { testid: "releases" }),
      el("h2", {}, "Build log"),
      el("pre", { class: "log", testid: "build-log" }, "loading…"),
    );
    main().replaceChildren(root);
    let following = false;
    poll(current, async () => {
      const v = await api(base, { signal });
      if (signal.aborted) return;
      clearError();
      drawVersion(root, deploymentId, v);
      const building = v.state === "created" || v.state === "building";
      if (building && !following) {
        following = true;
        followLog(root, `${base}/build-log?follow=1`, signal).finally(() => {
          following = false;
        });
      } else if (!building && !following && !root.dataset.logLoaded) {
        root.dataset.logLoaded = "1";
        const text = await apiText(`${base}/build-log`, signal);
        fill(root, "build-log", text || "(empty: no build output)");
      }
    }, 3000);
  }

  async function followLog(root, path, signal) {
    const pre = root.querySelector("[data-testid=build-log]");
    pre.textContent = "";
    root.dataset.logLoaded = "following";
    try {
      await readStream(path, {
        signal,
        onChunk(text) {
          pre.append(text);
          pre.scrollTop = pre.scrollHeight;
        },
      });
      root.dataset.logLoaded = "1";
    } catch (error) {
      if (!signal.aborted) showError(error);
    }
  }

  function drawVersion(root, deploymentId, v) {
    fill(root, "version-title", `Version v${v.version_number} `, badge(v.state, { testid: "version-state" }), " ", el("span", { class: "mono small muted" }, v.id));
    const failures = [];
    if (v.build_failure_reason) failures.push(el("h2", {}, "Build failure"), diagnostics(v.build_failure_reason, v.build_failure_diagnostics, "build-diagnostics"));
    for (const r of v.releases || []) {
      if (r.failure_reason) failures.push(el("h2", {}, `Release failure in ${r.environment}`), diagnostics(r.failure_reason, r.failure_diagnostics, `release-diagnostics-${r.id}`));
    }
    fill(root, "version-failure", failures);
    fill(
      root,
      "version-summary",
      el(
        "div",
        { class: "panel" },
        kv([
          ["state", badge(v.state)],
          ["kind", v.kind],
          ["image", v.runtime_image ? el("code", {}, v.runtime_image) : "—"],
          ["artifact", v.artifact_sha256 ? el("code", {}, v.artifact_sha256) : "—"],
          ["git", `${v.git_branch || "—"} ${v.git_hash ? v.git_hash.slice(0, 12) : ""}${v.is_dirty ? " (dirty)" : ""}`],
          v.git_message ? ["message", v.git_message] : null,
          ["author", v.author_name ? `${v.author_name} <${v.author_email}>` : "—"],
          ["created", when(v.created_at)],
          ["promoted", when(v.promoted_at)],
          ["pinned", v.pinned ? "yes (kept for rollback)" : "no"],
        ]),
      ),
    );
    const releases = v.releases || [];
    fill(
      root,
      "releases",
      table(
        ["release", "environment", "status", "replicas", "deployed", "retired", "rollbacks", "job", "failure"],
        releases.map((r) =>
          el(
            "tr",
            { testid: `release-${r.id}`, class: r.failure_reason ? "bad" : "" },
            el("td", { class: "mono small" }, r.id),
            el("td", {}, r.environment),
            el("td", {}, badge(r.status)),
            el("td", {}, String(r.replicas)),
            el("td", {}, when(r.deployed_at)),
            el("td", {}, when(r.retired_at)),
            el("td", {}, String(r.rollback_count)),
            el("td", {}, jobLink(r.job_id)),
            el("td", {}, r.failure_reason ? el("code", {}, r.failure_reason) : ""),
          ),
        ),
        { testid: "releases-table", emptyText: "never released" },
      ),
      releases
        .filter((r) => (r.rollout || {}).canary)
        .map((r) => el("div", {}, el("h3", {}, `Rollout of ${r.environment}`), canaryPanel(r.rollout.canary, r.rollout.strategy))),
    );
  }

  // ------------------------------------------------------------------ Failures

  function renderFailures() {
    const current = startView();
    const root = el(
      "section",
      { testid: "view-failures" },
      el("h1", {}, "Failures"),
      el("p", { class: "muted" }, "Failed jobs, newest first, with what happened, why, and what to do."),
      el("div", { testid: "failures-list" }),
    );
    main().replaceChildren(root);
    poll(current, async (signal) => {
      const page = await api("/jobs?state=failed&limit=50", { signal });
      if (signal.aborted) return;
      clearError();
      fill(
        root,
        "failures-list",
        page.data.length
          ? page.data.map((j) =>
              el(
                "div",
                { class: "panel", testid: `failed-${j.id}` },
                el(
                  "div",
                  {},
                  el("strong", {}, j.kind),
                  " ",
                  jobLink(j.id),
                  " — ",
                  deploymentLink(j.deployment_id),
                  j.environment ? ` / ${j.environment}` : "",
                  j.version_id ? [" — ", versionLink(j.deployment_id, j.version_id, "version")] : null,
                  " — ",
                  when(j.finished_at),
                ),
                diagnostics(j.failure_reason, j.failure_diagnostics),
              ),
            )
          : empty("no failed job"),
      );
    }, 5000);
  }

  // ------------------------------------------------------------------ router

  function render() {
    takeTokenFromFragment();
    if (!token.get()) {
      needToken();
      return;
    }
    signOutButton().hidden = false;
    const raw = location.hash.replace(/^#/, "") || "/queue";
    const [path, queryString] = raw.split("?");
    const params = new URLSearchParams(queryString || "");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    for (const a of document.querySelectorAll("nav a")) {
      a.classList.toggle("active", a.dataset.view === parts[0]);
    }
    if (parts[0] === "jobs" && parts[1]) renderJob(parts[1]);
    else if (parts[0] === "jobs") renderJobs(params);
    else if (parts[0] === "deployments" && parts[1] && parts[2] === "versions" && parts[3]) renderVersion(parts[1], parts[3]);
    else if (parts[0] === "deployments" && parts[1]) renderDeployment(parts[1]);
    else if (parts[0] === "deployments") renderDeployments();
    else if (parts[0] === "failures") renderFailures();
    else renderQueue();
  }

  window.addEventListener("hashchange", render);
  document.addEventListener("DOMContentLoaded", () => {
    signOutButton().addEventListener("click", () => {
      token.clear();
      needToken("Token forgotten.");
    });
    render();
  });
})();
