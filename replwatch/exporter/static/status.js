// replwatch status page: polls status.json (same origin, same credentials) and redraws.
// No dependencies, no external requests. Text goes in through textContent only.
"use strict";

(function () {
  const POLL_MS_MIN = 500;
  const COLLAPSE_OVER = 20; // with more groups than this, healthy ones start collapsed
  const userToggled = new Map(); // group name -> open (the person's choice wins)
  let lastOk = 0;
  let timer = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function seconds(v, exact) {
    if (v === null || v === undefined) return "–";
    const prefix = exact === false ? "≥" : "";
    if (v >= 3600) return prefix + (v / 3600).toFixed(1) + "h";
    if (v >= 60) return prefix + (v / 60).toFixed(1) + "m";
    if (v >= 10) return prefix + v.toFixed(1) + "s";
    return prefix + v.toFixed(2) + "s";
  }

  function plural(n, word, words) {
    return n + " " + (n === 1 ? word : (words || word + "s"));
  }

  function bytes(v) {
    if (v === null || v === undefined) return "–";
    const units = [["GiB", 1 << 30], ["MiB", 1 << 20], ["KiB", 1 << 10]];
    for (const [unit, size] of units) if (v >= size) return (v / size).toFixed(1) + " " + unit;
    return v + " B";
  }

  function percent(v) {
    return v === null || v === undefined ? "–" : (v * 100).toFixed(0) + "%";
  }

  function chart(history, windowSeconds, now) {
    const w = 180, h = 36, ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "chart");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const lags = history ? history.lag : [];
    const known = lags.filter((v) => v !== null);
    const peak = known.length ? Math.max(...known) : null;
    const max = Math.max(1, peak || 0); // the top of the chart: the peak, at least 1 s
    const minutes = Math.round(windowSeconds / 60);
    svg.setAttribute("aria-label", `lag over the last ${minutes} min, peak ${seconds(peak)}, scale 0 to ${seconds(max)}`);
    const start = now - windowSeconds;
    // one polyline per run of known buckets (a gap where the replica was not measured)
    let run = [];
    const flush = () => {
      if (run.length) {
        const line = document.createElementNS(ns, "polyline");
        line.setAttribute("points", (run.length === 1 ? [run[0], run[0].replace(/^[\d.]+/, (x) => String(Math.min(w, +x + 1.5)))] : run).join(" "));
        svg.append(line);
      }
      run = [];
    };
    lags.forEach((v, i) => {
      if (v === null) return flush();
      const t = history.start + (i + 0.5) * history.step;
      const x = Math.min(w, Math.max(0, ((t - start) / windowSeconds) * w));
      const y = h - 2 - (v / max) * (h - 4);
      run.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    });
    flush();
    const title = document.createElementNS(ns, "title");
    title.textContent = `peak ${seconds(peak)} in the last ${minutes} min (top of the chart: ${seconds(max)})`;
    svg.append(title);
    // the scale: the peak in seconds beside the chart (its top when 1 s or more)
    const scale = el("span", { class: "chart-scale", "data-field": "chart_peak" }, "peak " + seconds(peak));
    return el("span", { class: "chart-box" }, svg, scale);
  }

  function routingCell(r) {
    if (r.in_rotation === null) return el("span", { class: "muted" }, "–");
    const badge = el("span", { class: "badge " + (r.in_rotation ? "in" : "out") },
      r.in_rotation ? "in rotation" : "out");
    return el("span", {}, badge, " ", el("span", { class: "reason" }, r.routing_reason || ""));
  }

  function cell(label, field, content, cls) {
    return el("td", { "data-label": label, "data-field": field, class: cls }, content);
  }

  function lagTitle(r) {
    if (r.lag_seconds === null) return r.lag_at_least ? "not seen current: no lag known yet" : "no lag known";
    const lower = r.lag_lower_seconds, upper = r.lag_upper_seconds;
    if (lower !== null && upper !== null) return `between ${seconds(lower)} and ${seconds(upper)}`;
    if (r.lag_at_least) return "at least this much (not seen current, or no upper bound known)";
    return null;
  }

  function replicaRow(r, windowSeconds, now) {
    const lag = el("span", { class: "lag-big", title: lagTitle(r) }, seconds(r.lag_seconds, !r.lag_at_least));
    return el("tr", { class: "sev-" + r.severity, "data-replica": r.label, "data-severity": r.severity },
      cell("replica", "label", el("span", {}, r.label, r.chained ? el("span", { class: "reason" }, " (chained via " + r.upstream + ")") : null)),
      cell("link", "link", el("span", { class: "badge " + (r.link === "up" ? "ok" : "bad") }, r.link)),
      cell("lag", "lag", el("span", {}, lag, " ", el("span", { class: "reason" }, r.lag_source)), "num"),
      cell("heartbeat", "heartbeat", seconds(r.heartbeat_lag_seconds), "num"),
      cell("offset clock", "offset_clock", seconds(r.offset_lag_seconds, r.offset_lag_exact), "num"),
      cell("ACK age", "ack_age", seconds(r.ack_age_seconds), "num"),
      cell("byte lag", "lag_bytes", bytes(r.lag_bytes), "num"),
      cell("backlog", "backlog", el("span", { class: r.backlog_risk ? "badge " + r.backlog_risk : "muted" }, percent(r.backlog_usage_ratio))),
      cell("routing", "routing", routingCell(r)),
      cell("last " + Math.round(windowSeconds / 60) + " min", "chart", chart(r.history, windowSeconds, now)),
    );
  }

  function probeText(p) {
    if (!p) return "no WAIT probe yet";
    const got = p.acked !== null && p.wanted !== null ? ` ${p.acked}/${p.wanted}` : "";
    const took = p.seconds !== null ? ` in ${(p.seconds * 1000).toFixed(1)} ms` : "";
    const why = p.reason ? ` (${p.reason})` : "";
    const whose = p.accounting ? ` (${p.accounting})` : "";
    const age = p.age_seconds !== null ? `, ${seconds(p.age_seconds)} ago` : "";
    return `WAIT ${p.result}${got}${whose}${took}${why}${age}`;
  }

  function groupBlock(g, doc, collapseHealthy) {
    const open = userToggled.has(g.name) ? userToggled.get(g.name) : !(collapseHealthy && g.severity === "ok");
    const details = el("details", { class: "group sev-" + g.severity, "data-group": g.name, "data-severity": g.severity, open: open ? "" : null });
    details.addEventListener("toggle", () => userToggled.set(g.name, details.open));
    const master = g.master_up
      ? el("span", {}, "master ", el("b", {}, g.master), g.master_role_ok ? "" : el("span", { class: "badge bad" }, "reports role replica"))
      : el("span", {}, "master ", el("b", {}, g.master), " ", el("span", { class: "badge bad" }, "down"), " ", el("span", { class: "reason" }, g.master_error || ""));
    const rotation = g.reads_on_master
      ? el("span", { class: "badge bad", "data-field": "reads_on_master" }, "reads on master")
      : el("span", { class: "muted" }, `${g.in_rotation}/${g.replicas.length} in rotation`);
    // one badge per reason, each in its own severity's colour; "ok" when there is none
    const reasons = g.reasons.length ? g.reasons : [{ severity: "ok", text: "ok" }];
    const badges = el("span", { class: "reasons", "data-field": "reasons" },
      ...reasons.map((x) => el("span", { class: "badge " + x.severity, "data-severity": x.severity }, x.text)));
    details.append(el("summary", {},
      el("span", { class: "gname" }, g.name),
      badges,
      master,
      rotation,
      el("span", { class: "muted" }, "worst lag " + seconds(g.worst_lag_seconds)),
      el("span", { class: "muted", "data-field": "probe" }, probeText(g.probe)),
    ));
    if (!g.replicas.length) {
      details.append(el("div", { class: "empty" }, "no replicas"));
    } else {
      const head = el("tr", {}, ...["replica", "link", "lag (best)", "heartbeat", "offset clock", "ACK age", "byte lag", "backlog", "routing", "last " + Math.round(doc.history_window / 60) + " min"].map((h) => el("th", {}, h)));
      const body = el("tbody", {}, ...g.replicas.map((r) => replicaRow(r, doc.history_window, doc.generated_at)));
      details.append(el("table", { class: "replicas" }, el("thead", {}, head), body));
    }
    if (g.others.length) details.append(othersBlock(g.others));
    return details;
  }

  // followers the master reports that are none of the group's replicas (WAIT counts them)
  function othersBlock(others) {
    const items = others.map((o) => {
      const facts = [o.task ? o.address : null, o.state,
        o.lag_bytes !== null ? bytes(o.lag_bytes) + " behind" : null,
        "ACK " + seconds(o.ack_age_seconds) + " ago"].filter((x) => x !== null);
      return el("li", { "data-follower": o.address, "data-task": o.task },
        el("b", {}, o.name), " ", el("span", { class: "reason" }, "(" + facts.join(", ") + ")"));
    });
    return el("div", { class: "others", "data-field": "others" },
      el("span", { class: "muted" }, "also following the master (not a listed replica; counted by WAIT): "),
      el("ul", {}, ...items));
  }

  function taskRow(t) {
    let progress = null;
    if (t.progress !== null) {
      const bar = el("span", { class: "progress", title: percent(t.progress) });
      const fill = el("span", {});
      fill.style.width = (t.progress * 100).toFixed(1) + "%";
      bar.append(fill);
      progress = el("span", {}, bar, " ", percent(t.progress), t.keys_total ? ` (${t.keys_loaded}/${t.keys_total} keys)` : "");
    }
    return el("tr", { class: "sev-" + t.severity, "data-task": t.name, "data-severity": t.severity },
      cell("task", "name", el("b", {}, t.name)),
      cell("state", "state", el("span", { class: "badge " + t.severity }, t.state)),
      cell("source → target", "route", `${t.source} → ${t.target}`),
      cell("lag", "lag", el("span", { class: "lag-big" }, seconds(t.lag_seconds, t.lag_seconds_exact)), "num"),
      cell("byte lag", "lag_bytes", bytes(t.lag_bytes), "num"),
      cell("full sync", "progress", progress || el("span", { class: "muted" }, "–")),
      cell("problem", "error", el("span", { class: "reason" }, t.error || (t.stale ? "stale" : ""))),
    );
  }

  function matches(text, needle) {
    return !needle || text.toLowerCase().includes(needle);
  }

  function render(doc) {
    const needle = document.getElementById("filter").value.trim().toLowerCase();
    const problemsOnly = document.getElementById("problems").checked;
    const s = doc.summary;
    document.getElementById("summary").textContent =
      `${plural(s.groups, "group")} (${s.groups_bad} bad) · ${s.replicas_in_rotation}/${plural(s.replicas, "replica")} in rotation · ${plural(s.tasks, "sync task")} (${s.tasks_bad} bad)`;
    document.getElementById("version").textContent = "replwatch " + doc.version;
    const collapseHealthy = doc.groups.length > COLLAPSE_OVER;
    const groups = doc.groups.filter((g) =>
      (!problemsOnly || g.severity !== "ok") &&
      matches([g.name, g.master, ...g.replicas.map((r) => r.label), ...g.others.map((o) => o.name)].join(" "), needle));
    const container = document.getElementById("groups");
    container.replaceChildren(...(groups.length ? groups.map((g) => groupBlock(g, doc, collapseHealthy)) : [el("div", { class: "empty" }, doc.groups.length ? "no group matches" : "no groups")]));
    const tasks = doc.sync.filter((t) => (!problemsOnly || t.severity !== "ok") && matches([t.name, t.source, t.target].join(" "), needle));
    const sync = document.getElementById("sync");
    document.getElementById("sync-section").classList.toggle("hidden", doc.sync.length === 0);
    const head = el("tr", {}, ...["task", "state", "source → target", "lag", "byte lag", "full sync", "problem"].map((h) => el("th", {}, h)));
    sync.replaceChildren(tasks.length ? el("table", { class: "tasks" }, el("thead", {}, head), el("tbody", {}, ...tasks.map(taskRow))) : el("div", { class: "empty" }, "no task matches"));
  }

  let latest = null;

  async function poll() {
    let delay = 1000;
    try {
      const response = await fetch("status.json", { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      latest = await response.json();
      delay = Math.max(POLL_MS_MIN, (latest.poll_interval || 1) * 1000);
      lastOk = Date.now();
      render(latest);
      document.body.dataset.updated = String(lastOk);
      document.body.dataset.generated = String(latest.generated_at); // what the lags are as of
    } catch (err) {
      document.getElementById("updated").textContent = "update failed: " + err.message;
    }
    timer = setTimeout(poll, delay);
  }

  setInterval(() => {
    if (lastOk) document.getElementById("updated").textContent = "updated " + Math.round((Date.now() - lastOk) / 1000) + "s ago";
  }, 1000);
  for (const id of ["filter", "problems"]) document.getElementById(id).addEventListener("input", () => latest && render(latest));
  poll();
})();
