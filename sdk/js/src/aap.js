// AAP's browser SDK: consent first, small, batching, autocapture without field values.
//
// Nothing is sent and nothing is stored on the device (but the consent choice itself)
// until the person consents to `analytics`. Global Privacy Control turns `marketing`
// and `partner_sharing` off for good. Events go to POST {host}/v1/batch as text/plain
// (no CORS preflight) with the write key in the body, gzipped where the browser has
// CompressionStream; on page hide the queue leaves with sendBeacon. With
// `transport: "websocket"` batches go over GET {host}/v1/stream (protocol aap.v1, the
// key in Sec-WebSocket-Protocol) and leave the queue only once acknowledged; a refused
// stream falls back to HTTP. The same consent rules decide what is queued and sent.

const VERSION = "0.1.0";
const W = window;
const D = document;
const N = navigator;
const P = "aap_";
const GPC_OFF = ["marketing", "partner_sharing"];
const SESSION_MS = 30 * 60 * 1000;

let key;
let host = "";
let o = {};
let consent = { p: {} };
let ids = {};
let q = [];
let session;
let timer;
let backoff = 0;
let retryAt = 0;
let sending = false;
let lastUrl;
let started = false;
let touched = new Set();
let ws;
let wsReady;
let wsDead;
let seq = 0;
let waiting;

const save = (k, v) => {
  try {
    v == null ? localStorage.removeItem(P + k) : localStorage.setItem(P + k, JSON.stringify(v));
  } catch (e) {}
};
const load = (k) => {
  try {
    return JSON.parse(localStorage.getItem(P + k));
  } catch (e) {}
};
const gpc = () => N.globalPrivacyControl === true;
const allowed = () => consent.p.analytics === true;
const now = () => new Date().toISOString();

// UUIDv7: 48 bits of milliseconds, then random bits (RFC 9562).
const uuid = () => {
  const b = crypto.getRandomValues(new Uint8Array(16));
  for (let i = 5, t = Date.now(); i >= 0; i--, t = Math.floor(t / 256)) b[i] = t % 256;
  b[6] = (b[6] & 15) | 0x70;
  b[8] = (b[8] & 63) | 128;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
};

const gzip = async (s) => {
  if (!W.CompressionStream || s.length < 1024) return s;
  try {
    const gz = new Blob([s]).stream().pipeThrough(new CompressionStream("gzip"));
    return await new Response(gz).blob();
  } catch (e) {
    return s;
  }
};

const post = (path, body, n = 0) =>
  fetch(host + path, {
    method: "POST",
    body: JSON.stringify({ ...body, writeKey: key }),
    headers: { "Content-Type": "text/plain" },
    keepalive: true,
  })
    .then((r) => {
      if (r.status == 429 || r.status >= 500) throw 0;
    })
    .catch(() => n < 5 && setTimeout(() => post(path, body, n + 1), 1000 << n));

const schedule = (ms = o.flushInterval) => {
  clearTimeout(timer);
  timer = setTimeout(flush, ms);
};

const drop = (batch) => {
  q = q.filter((m) => !batch.includes(m));
  save("q", q.length ? q : null);
};

// One batch over the stream: resolves 0 once acknowledged (durable), the ms to wait
// after a nack, -1 when the connection was lost (resent), -2 when the stream is refused
// (HTTP from now on).
const stream = (batch) =>
  new Promise((done) => {
    const send = () => {
      waiting = { s: ++seq, done };
      ws.send(JSON.stringify({ seq, batch, sentAt: now() }));
    };
    if (ws && wsReady) return send();
    ws = new WebSocket((host || location.origin).replace(/^http/, "ws") + "/v1/stream", ["aap.v1", "key." + key]);
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.ready) {
        wsReady = true;
        send();
      } else if (m.ping) ws.send(JSON.stringify({ pong: m.ping }));
      else if (waiting && (m.ack ?? m.nack) == waiting.s) {
        const w = waiting;
        waiting = null;
        w.done(m.nack ? m.retry_after * 1000 || 1000 : 0);
      }
    };
    ws.onclose = (e) => {
      wsDead = !wsReady || e.code == 1008 || e.code == 1009;
      const w = waiting || { done };
      ws = wsReady = waiting = null;
      w.done(wsDead ? -2 : -1);
    };
  });

async function flush(beacon) {
  if (!q.length || sending || !allowed()) return;
  const batch = q.slice(0, 100);
  const body = JSON.stringify({ batch, writeKey: key, sentAt: now() });
  const url = host + "/v1/batch";
  if (beacon === true) {
    // The page is going away: the browser sends this even after it is gone.
    const sent = N.sendBeacon
      ? N.sendBeacon(url, new Blob([body], { type: "text/plain" }))
      : (fetch(url, { method: "POST", body, keepalive: true, headers: { "Content-Type": "text/plain" } }), true);
    if (sent) drop(batch);
    return;
  }
  if (!N.onLine || Date.now() < retryAt) return schedule(Math.max(retryAt - Date.now(), 1000));
  sending = true;
  let retry = false;
  let wait = 0;
  const s = o.transport == "websocket" && !wsDead && W.WebSocket ? await stream(batch) : -2;
  if (s > -2) {
    retry = s != 0;
    wait = Math.max(s, 0);
  } else
    try {
      const r = await fetch(url, { method: "POST", body: await gzip(body), headers: { "Content-Type": "text/plain" } });
      retry = r.status == 429 || r.status >= 500;
      wait = +r.headers.get("Retry-After") * 1000 || 0;
    } catch (e) {
      retry = true; // offline, or the server cannot be reached
    }
  sending = false;
  if (retry) {
    // exponential backoff with jitter, never sooner than the server's Retry-After
    backoff = Math.min(backoff * 2 || 1000, 60000);
    retryAt = Date.now() + Math.max(backoff * (0.5 + Math.random() / 2), wait);
    return schedule(retryAt - Date.now());
  }
  backoff = retryAt = 0;
  drop(batch); // accepted, or refused for good (4xx): never resent
  if (q.length) flush();
}

function message(type, fields) {
  if (!allowed()) return; // no consent: nothing is sent, nothing is kept
  const t = Date.now();
  if (!session || t - session.t > SESSION_MS) session = { id: uuid() };
  session.t = t;
  save("s", session);
  const m = {
    type,
    messageId: uuid(),
    anonymousId: ids.a,
    timestamp: new Date(t).toISOString(),
    context: {
      library: { name: "aap.js", version: VERSION },
      page: { url: location.href, path: location.pathname, search: location.search, title: D.title, referrer: D.referrer },
      userAgent: N.userAgent,
      locale: N.language,
      sessionId: session.id,
      consent: { categoryPreferences: { ...consent.p } },
      ...(gpc() && { gpc: true }),
    },
    ...fields,
  };
  if (ids.u) m.userId = ids.u;
  q.push(m);
  if (q.length > o.maxQueue) q.splice(0, q.length - o.maxQueue);
  save("q", q);
  q.length >= o.flushAt ? flush() : schedule();
}

// A selector that survives re-renders: an id, a data-aap / data-testid attribute, or
// the tag path with positions among siblings (at most five levels).
const selector = (el) => {
  const parts = [];
  for (; el && el.nodeType == 1 && parts.length < 5; el = el.parentElement) {
    const mark = el.id ? "#" + CSS.escape(el.id) : ["data-aap", "data-testid"].map((a) => el.hasAttribute(a) && `[${a}="${CSS.escape(el.getAttribute(a))}"]`).find(Boolean);
    if (mark) {
      parts.unshift((el.id ? "" : el.tagName.toLowerCase()) + mark);
      break;
    }
    let i = 1;
    for (let x = el; (x = x.previousElementSibling); ) if (x.tagName == el.tagName) i++;
    parts.unshift(el.tagName.toLowerCase() + (i > 1 ? `:nth-of-type(${i})` : ""));
  }
  return parts.join(" > ");
};

const formProps = (f) => ({ selector: selector(f), id: f.id || undefined, name: f.getAttribute("name") || undefined, fields: f.elements.length });

const abandoned = () => {
  for (const f of touched) api.track("Form Abandoned", formProps(f));
  touched.clear();
};

const pageChanged = () => {
  if (location.href == lastUrl) return;
  abandoned();
  api.page();
};

function autocapture() {
  for (const name of ["pushState", "replaceState"]) {
    const orig = history[name];
    history[name] = function () {
      const r = orig.apply(this, arguments);
      pageChanged();
      return r;
    };
  }
  W.addEventListener("popstate", pageChanged);
  W.addEventListener("hashchange", pageChanged);
  D.addEventListener(
    "click",
    (e) => {
      const el = e.target.closest && e.target.closest("a,button,[role=button],input[type=submit],input[type=button]");
      if (!el) return;
      const tag = el.tagName.toLowerCase();
      api.track("Element Clicked", {
        tag,
        // the label of a link or button; for inputs only their type, never a value
        text: tag == "input" ? el.type : (el.innerText || el.textContent || "").trim().slice(0, 100),
        selector: selector(el),
        href: el.href || undefined,
      });
    },
    true,
  );
  // A field changed (its value is never read): the form counts as started.
  D.addEventListener("change", (e) => e.target.form && touched.add(e.target.form), true);
  D.addEventListener(
    "submit",
    (e) => {
      touched.delete(e.target);
      api.track("Form Submitted", formProps(e.target));
    },
    true,
  );
}

function hidden() {
  if (o.autocapture) abandoned();
  flush(true);
}

function forget() {
  // Withdrawal: the queue and every id go; only the choice itself stays.
  clearTimeout(timer);
  if (ws) ws.close();
  q = [];
  ids = {};
  session = null;
  for (const k of ["q", "ids", "s"]) save(k);
}

function gpcApply(p) {
  if (gpc()) for (const k of GPC_OFF) p[k] = false;
  return p;
}

const api = {
  init(writeKey, options = {}) {
    key = writeKey;
    o = { flushAt: 20, flushInterval: 5000, maxQueue: 1000, autocapture: true, policyVersion: "1", ...options };
    host = (o.host || "").replace(/\/$/, "");
    consent = load("consent") || { p: {} };
    gpcApply(consent.p);
    if (allowed()) {
      ids = load("ids") || { a: uuid() };
      save("ids", ids);
      q = load("q") || [];
      session = load("s");
    }
    if (!started) {
      started = true;
      W.addEventListener("online", () => {
        retryAt = 0;
        flush();
      });
      W.addEventListener("pagehide", hidden);
      D.addEventListener("visibilitychange", () => D.visibilityState == "hidden" && hidden());
      if (o.autocapture) autocapture();
    }
    if (o.autocapture) api.page();
    flush();
    return api;
  },
  track(event, properties = {}) {
    message("track", { event, properties });
  },
  page(name, properties = {}) {
    const referrer = lastUrl || D.referrer;
    lastUrl = location.href;
    message("page", {
      name: name || D.title || undefined,
      properties: { url: location.href, path: location.pathname, search: location.search, title: D.title, referrer, ...properties },
    });
  },
  identify(userId, traits = {}) {
    if (!allowed()) return;
    if (userId) ids.u = String(userId);
    save("ids", ids);
    message("identify", { traits });
  },
  alias(userId, previousId) {
    if (!allowed()) return;
    message("alias", { previousId: previousId || ids.u || ids.a, userId: String(userId) });
    ids.u = String(userId);
    save("ids", ids);
  },
  group(groupId, traits = {}) {
    message("group", { groupId: String(groupId), traits });
  },
  reset() {
    flush(true);
    ids = allowed() ? { a: uuid() } : {};
    session = null;
    save("s");
    save("ids", allowed() ? ids : null);
  },
  flush: () => flush(),
  consent: {
    set(purposes) {
      const was = allowed();
      consent = { p: gpcApply({ ...consent.p, ...purposes }), t: now(), v: o.policyVersion };
      save("consent", consent);
      if (allowed() && !ids.a) {
        ids = { a: uuid() };
        save("ids", ids);
      }
      if (ids.a || ids.u) {
        post("/v1/consent", { anonymousId: ids.a, userId: ids.u, purposes: consent.p, policy_version: o.policyVersion, channel: "aap.js", timestamp: consent.t });
      }
      if (!allowed()) forget();
      else if (!was && o.autocapture) {
        lastUrl = null;
        api.page();
      }
    },
    get: () => ({ ...consent.p }),
    // The consent banner, loaded on first use from {host}/sdk-banner.js (see banner.js):
    // resolves with the choice recorded, or null when it was closed without one.
    show(opts = {}) {
      const go = () => W.aapBanner(api, { host, source: o.source, lang: o.lang, ...opts });
      if (W.aapBanner) return go();
      return new Promise((ok, ko) => {
        const s = D.createElement("script");
        s.src = host + "/sdk-banner.js";
        s.onload = () => ok(go());
        s.onerror = ko;
        D.head.appendChild(s);
      });
    },
  },
};

W.aap = api;
