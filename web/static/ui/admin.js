// The admin's view: every tenant's live counts (GET /v1/admin/stats).
"use strict";

(() => {
  const { api, el, every, duration, number, query, failed } = Ops;
  let cursor = null;
  let extraPages = false;

  function row(t) {
    return el(
      "tr",
      { dataset: { tenantId: t.tenant_id } },
      el("td", {}, t.name),
      el("td", { class: "muted" }, t.tenant_id),
      el("td", { class: "active" }, t.active),
      el("td", { class: "paused" }, t.paused),
      el("td", { class: t.overdue ? "overdue late" : "overdue" }, t.overdue),
      el("td", {}, t.oldest_overdue_age_seconds === null ? "–" : duration(t.oldest_overdue_age_seconds)),
      el("td", { class: "started" }, t.started_today),
      el("td", { class: t.breached_today ? "breached late" : "breached" }, t.breached_today),
      el("td", {}, t.compliance_percent_today === null ? "–" : `${number(t.compliance_percent_today)}%`),
    );
  }

  async function load(append = false) {
    const page = await api(`/v1/admin/stats${query({ limit: 50, cursor: append ? cursor : null })}`);
    const body = document.querySelector("#tenants tbody");
    if (!append) body.replaceChildren();
    body.append(...page.items.map(row));
    cursor = page.next_cursor;
    document.getElementById("tenants-more").hidden = !cursor;
    document.getElementById("as-of").textContent = `as of ${page.as_of}`;
  }

  document.getElementById("tenants-more").addEventListener("click", () => {
    extraPages = true;
    load(true).catch(failed("tenants"));
  });

  Ops.ready(
    async () => {
      await api(`/v1/admin/stats${query({ limit: 1 })}`);
      return "admin";
    },
    () => every(5000, () => (extraPages ? null : load())),
  );
})();
