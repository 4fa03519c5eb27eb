// The tenant's view: live counts, timers with countdowns, a timer's timeline,
// dead-lettered timers and webhook deliveries with retry buttons, and the
// compliance chart. Everything comes from the tenant's JSON API (Ops.api).
"use strict";

(() => {
  const { api, el, say, failed, every, duration, when, number, query } = Ops;
  const DAY_MS = 86400000;
  const CHART_DAYS = 14;
  let clockOffsetMs = 0; // server minus browser clock, from the stats' as_of
  let timersCursor = null;
  let extraPages = false; // "More" was used: stop replacing the table every refresh

  const startOfUtcDay = (ms) => ms - (ms % DAY_MS);
  const iso = (ms) => new Date(ms).toISOString();
  const now = () => Date.now() + clockOffsetMs;
  const stats = (fromMs, toMs) => api(`/v1/stats${query({ from: iso(fromMs), to: iso(toMs) })}`);

  // ------------------------------------------------------------------ counts
  async function counts() {
    const asked = Date.now();
    // Open timers count whenever they started; breaches only of today's starts.
    const [ever, today] = await Promise.all([
      stats(0, asked + DAY_MS),
      stats(startOfUtcDay(asked), asked + DAY_MS),
    ]);
    clockOffsetMs = new Date(ever.as_of).getTime() - (asked + Date.now()) / 2;
    document.getElementById("count-active").textContent = ever.active;
    document.getElementById("count-paused").textContent = ever.paused;
    document.getElementById("count-overdue").textContent = ever.overdue.count;
    document.getElementById("count-breached").textContent = today.breached;
  }

  // ------------------------------------------------------------------ timers
  function timerFilters() {
    return {
      status: document.getElementById("filter-status").value,
      lead_id: document.getElementById("filter-lead").value.trim(),
      processing_status: document.getElementById("filter-processing").value,
    };
  }

  const OPEN = new Set(["ACTIVE", "DUE", "ESCALATED"]);

  function timerRow(timer) {
    // A countdown only where the due time still matters: open and not paused.
    const countdown = OPEN.has(timer.status)
      ? el("span", { class: "countdown", dataset: { due: timer.due_at } })
      : el("span", { class: "muted" }, "–");
    const steps = timer.escalations.map((e) => `${e.step}:${e.outcome}`).join(" ");
    return el(
      "tr",
      { dataset: { timerId: timer.id, lead: timer.lead_id } },
      el("td", {}, timer.lead_id),
      el("td", {}, timer.sla_contract_id),
      el("td", {}, el("span", { class: `badge ${timer.status}` }, timer.status),
        timer.processing_status === "FAILED" ? el("span", { class: "badge FAILED" }, "DEAD") : null),
      el("td", {}, when(timer.due_at)),
      el("td", {}, countdown),
      el("td", { class: "steps" }, steps || "–"),
      el("td", {}, el("button", { type: "button", class: "timeline", onclick: () => timeline(timer) },
        "Timeline")),
    );
  }

  async function loadTimers(append = false) {
    const params = { ...timerFilters(), limit: 50, cursor: append ? timersCursor : null };
    const page = await api(`/v1/timers${query(params)}`);
    const body = document.querySelector("#timers tbody");
    if (!append) body.replaceChildren();
    for (const timer of page.items) body.append(timerRow(timer));
    timersCursor = page.next_cursor;
    document.getElementById("timers-more").hidden = !timersCursor;
    tick();
  }

  function tick() {
    const at = now();
    for (const span of document.querySelectorAll(".countdown[data-due]")) {
      const left = (new Date(span.dataset.due).getTime() - at) / 1000;
      span.textContent = left >= 0 ? `in ${duration(left)}` : `${duration(left)} overdue`;
      span.classList.toggle("late", left < 0);
    }
  }

  // ------------------------------------------------------------------ timeline
  async function timeline(timer) {
    const data = await api(`/v1/timers/${timer.id}/timeline`);
    document.getElementById("timeline-title").textContent = `lead ${timer.lead_id} · ${timer.id}`;
    const list = document.getElementById("timeline");
    list.replaceChildren(
      ...data.items.map((entry) => {
        const d = entry.details || {};
        const facts = ["step", "repeat", "outcome", "action", "target", "threshold", "reason",
          "error", "breached"]
          .filter((k) => d[k] !== undefined && d[k] !== null)
          .map((k) => `${k}=${d[k]}`)
          .join(" ");
        return el("li", { class: `entry ${entry.kind}` },
          el("time", {}, when(entry.at)), " ", el("strong", {}, entry.kind), " ", facts);
      }),
    );
    document.getElementById("timeline-card").hidden = false;
  }

  // ------------------------------------------------------------------ dead letters
  async function deadLetters() {
    const page = await api(`/v1/timers${query({ processing_status: "FAILED", limit: 50 })}`);
    const body = document.querySelector("#dead tbody");
    body.replaceChildren(
      ...page.items.map((timer) =>
        el("tr", { dataset: { timerId: timer.id, lead: timer.lead_id } },
          el("td", {}, timer.lead_id),
          el("td", {}, timer.status),
          el("td", {}, timer.attempts),
          el("td", { class: "error-text" }, timer.last_error || "–"),
          el("td", {}, el("button", { type: "button", class: "retry", onclick: retryTimer(timer) },
            "Retry")))),
    );
    document.getElementById("dead-empty").hidden = page.items.length > 0;
  }

  function retryTimer(timer) {
    return async (event) => {
      event.target.disabled = true;
      try {
        await api(`/v1/timers/${timer.id}/retry`, { method: "POST" });
        say(`Timer of lead ${timer.lead_id} re-armed.`);
      } catch (error) {
        failed("retry")(error);
      }
      await Promise.all([deadLetters(), loadTimers()]).catch(failed("refresh"));
    };
  }

  // ------------------------------------------------------------------ deliveries
  async function webhooks() {
    const select = document.getElementById("webhook");
    const chosen = select.value;
    const page = await api("/v1/webhooks?limit=200");
    select.replaceChildren(...page.items.map((w) =>
      el("option", { value: w.id }, `${w.url}${w.enabled ? "" : " (disabled)"}`)));
    if (page.items.some((w) => w.id === chosen)) select.value = chosen;
    await deliveries();
  }

  async function deliveries() {
    const webhook = document.getElementById("webhook").value;
    const body = document.querySelector("#deliveries tbody");
    if (!webhook) {
      body.replaceChildren();
      document.getElementById("deliveries-empty").hidden = false;
      return;
    }
    const status = document.getElementById("delivery-status").value;
    const page = await api(`/v1/webhooks/${webhook}/deliveries${query({ status, limit: 50 })}`);
    body.replaceChildren(
      ...page.items.map((d) =>
        el("tr", { dataset: { deliveryId: d.id, status: d.status } },
          el("td", {}, d.id),
          el("td", {}, `${d.event_type} (${d.event_id})`),
          el("td", {}, el("span", { class: `badge ${d.status}` }, d.status)),
          el("td", {}, d.attempts),
          el("td", {}, d.last_status_code ? `${d.last_status_code} in ${d.last_duration_ms} ms` : "–"),
          el("td", { class: "error-text" }, d.last_error || "–"),
          el("td", {}, d.status === "PENDING" ? null : el("button",
            { type: "button", class: "retry", onclick: retryDelivery(webhook, d) }, "Retry")))),
    );
    document.getElementById("deliveries-empty").hidden = page.items.length > 0;
  }

  function retryDelivery(webhook, delivery) {
    return async (event) => {
      event.target.disabled = true;
      try {
        await api(`/v1/webhooks/${webhook}/deliveries/${delivery.id}/retry`, { method: "POST" });
        say(`Delivery ${delivery.id} due again.`);
      } catch (error) {
        failed("retry")(error);
      }
      await deliveries().catch(failed("refresh"));
    };
  }

  // ------------------------------------------------------------------ chart
  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attributes = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function chart() {
    const today = startOfUtcDay(now());
    const days = Array.from({ length: CHART_DAYS }, (_, i) => today - (CHART_DAYS - 1 - i) * DAY_MS);
    const figures = await Promise.all(days.map((d) => stats(d, d + DAY_MS)));
    const width = 720, height = 220, left = 40, bottom = 30, top = 10;
    const plotH = height - bottom - top;
    const slot = (width - left) / CHART_DAYS;
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "Compliance percent per day", class: "compliance" });
    for (const pct of [0, 50, 100]) {
      const y = top + plotH * (1 - pct / 100);
      root.append(svg("line", { x1: left, x2: width, y1: y, y2: y, class: "grid" }));
      root.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "axis" }, `${pct}%`));
    }
    figures.forEach((f, i) => {
      const x = left + i * slot;
      const label = new Date(days[i]).toISOString().slice(5, 10);
      root.append(svg("text", { x: x + slot / 2, y: height - 10, "text-anchor": "middle",
        class: "axis" }, label));
      if (f.compliance_percent === null) return;
      const h = (plotH * f.compliance_percent) / 100;
      const bar = svg("rect", { x: x + slot * 0.15, y: top + plotH - h, width: slot * 0.7,
        height: Math.max(h, 1), class: f.compliance_percent >= 95 ? "bar good" : "bar bad",
        "data-day": label, "data-percent": f.compliance_percent });
      bar.append(svg("title", {}, `${label}: ${f.compliance_percent}% (${f.completed_within_sla} ` +
        `within, ${f.breached} breached, ${f.started} started)`));
      root.append(bar);
    });
    document.getElementById("chart").replaceChildren(root);
  }

  // ------------------------------------------------------------------ wiring
  document.getElementById("timer-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    extraPages = false;
    loadTimers().catch(failed("timers"));
  });
  document.getElementById("timers-more").addEventListener("click", () => {
    extraPages = true;
    loadTimers(true).catch(failed("timers"));
  });
  document.getElementById("delivery-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    deliveries().catch(failed("deliveries"));
  });
  document.getElementById("webhook").addEventListener("change", () =>
    deliveries().catch(failed("deliveries")));

  Ops.ready(
    async () => {
      // Any tenant route proves the key; a cheap one.
      await api(`/v1/timers${query({ limit: 1 })}`);
      return "tenant";
    },
    () => {
      every(2000, counts);
      every(2000, () => (extraPages ? null : loadTimers()));
      every(3000, deadLetters);
      every(3000, webhooks);
      every(60000, chart);
      setInterval(tick, 250);
    },
  );
})();
