// The ops page's shared part: sign-in, the API client and DOM helpers.
//
// The secret (a tenant's API key, or the admin token) lives in sessionStorage:
// this tab only, gone with it, never in a cookie, so no cross-site request can
// carry it, and never in a URL. It is sent as a Bearer header on same-origin
// fetch() calls. Data is written with textContent only, never as markup.
"use strict";

const Ops = (() => {
  const realm = document.body.dataset.realm; // "tenant" or "admin"
  const storageKey = `sla-ops:${realm}`;
  const statusLine = document.getElementById("status");
  let onReady = null;
  const timers = [];

  class ApiError extends Error {
    constructor(status, detail, body) {
      super(detail);
      this.status = status;
      this.body = body;
    }
  }

  const secret = () => sessionStorage.getItem(storageKey);

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json", Authorization: `Bearer ${secret()}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", // no cookie rides along, and none is needed
      cache: "no-store",
      redirect: "error",
    });
    const type = response.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await response.json() : null;
    if (response.status === 401) {
      signOut("The key was refused: sign in again.");
      throw new ApiError(401, "unauthorized", data);
    }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.detail) || response.statusText, data);
    }
    return data;
  }

  // el("td", {class: "x"}, "text", child...): an element; strings become text nodes.
  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function say(text, isError = false) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", isError);
  }

  function failed(what) {
    return (error) => {
      if (error instanceof ApiError && error.status === 401) return;
      say(`${what}: ${error.message}`, true);
    };
  }

  // Repeats fn every ms while signed in (and once now).
  function every(ms, fn) {
    const run = () => {
      if (secret()) Promise.resolve(fn()).catch(failed("refresh"));
    };
    run();
    timers.push(setInterval(run, ms));
  }

  function show(signedIn) {
    document.getElementById("sign-in").hidden = signedIn;
    document.getElementById("app").hidden = !signedIn;
    document.getElementById("sign-out").hidden = !signedIn;
  }

  function signOut(message) {
    sessionStorage.removeItem(storageKey);
    for (const t of timers.splice(0)) clearInterval(t);
    show(false);
    document.getElementById("who").textContent = "";
    document.getElementById("sign-in-error").textContent = message || "";
  }

  async function start(probe) {
    try {
      const who = await probe();
      document.getElementById("who").textContent = who;
      show(true);
      say("");
      onReady();
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) {
        signOut(error instanceof ApiError && error.status === 404
          ? "Not available: the server has no admin token configured."
          : `Sign-in failed: ${error.message}`);
      }
    }
  }

  // ready(probe, run): probe() checks the secret (resolves to a label, throws
  // ApiError 401 if refused); run() starts the page once signed in.
  function ready(probe, run) {
    onReady = run;
    const form = document.getElementById("sign-in");
    form.addEventListener("submit", (event) => {
      event.preventDefault(); // the key goes to sessionStorage, never into a request URL
      const input = document.getElementById("secret");
      sessionStorage.setItem(storageKey, input.value.trim());
      input.value = "";
      start(probe);
    });
    document.getElementById("sign-out").addEventListener("click", () => signOut(""));
    if (secret()) start(probe);
    else show(false);
  }

  // Formatting.
  const pad = (n) => String(n).padStart(2, "0");

  function duration(seconds) {
    const s = Math.floor(Math.abs(seconds));
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d) return `${d}d ${pad(h)}h ${pad(m)}m`;
    if (h) return `${h}h ${pad(m)}m ${pad(s % 60)}s`;
    if (m) return `${m}m ${pad(s % 60)}s`;
    return `${s % 60}s`;
  }

  const when = (iso) => (iso ? new Date(iso).toISOString().replace(".000Z", "Z") : "–");
  const number = (n) => (n === null || n === undefined ? "–" : String(n));

  function query(params) {
    const search = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v) search.set(k, v);
    const text = search.toString();
    return text ? `?${text}` : "";
  }

  return { api, ApiError, el, say, failed, every, ready, duration, when, number, query };
})();
