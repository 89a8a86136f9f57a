// The live stream for every page: connects, keeps the highest seq it has seen, and after any drop
// reconnects by itself with from=<that seq>, so nothing is lost on screen. No library, no build step.
"use strict";

const Live = {
  // Seconds as m:ss.mmm from microseconds; "" for none. Truncated, never rounded up, as timing
  // shows times and as the RMonitor feed and the CLI print them.
  lap(us) {
    if (us === null || us === undefined) return "";
    const ms = Math.floor(us / 1000);
    const m = Math.floor(ms / 60000);
    const s = ((ms % 60000) / 1000).toFixed(3).padStart(6, "0");
    return m > 0 ? `${m}:${s}` : (ms / 1000).toFixed(3);
  },

  gap(g) {
    if (!g) return "";
    if (g.Laps) return `+${g.Laps.laps} lap${g.Laps.laps === 1 ? "" : "s"}`;
    if (g.Time) return `+${Live.lap(g.Time.us)}`;
    return JSON.stringify(g);
  },

  // Text for an element, escaped by construction.
  el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
    return e;
  },

  param(name) {
    return new URLSearchParams(location.search).get(name);
  },

  token() {
    return localStorage.getItem("venue-token") || "";
  },

  // A JSON request; resolves to {status, body}.
  async api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const token = Live.token();
    if (token) headers["Authorization"] = "Bearer " + token;
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let parsed = null;
    try { parsed = await r.json(); } catch (_) { parsed = null; }
    return { status: r.status, body: parsed };
  },

  // Kiosk mode for TVs: no chrome, no cursor; a click asks for full screen.
  kiosk() {
    if (Live.param("kiosk") !== "1") return;
    document.body.classList.add("kiosk");
    document.addEventListener("click", () => document.documentElement.requestFullscreen?.().catch(() => {}));
  },

  // Opens the stream. opts: channels (array), eventId, onSnapshot(channel, payload, env), onEvent(env).
  connect(opts) {
    const state = { seq: null, ws: null, retryMs: 250, connected: false };
    const badge = document.getElementById("conn");
    const show = (text, ok) => {
      if (!badge) return;
      badge.textContent = text;
      badge.className = ok ? "conn ok" : "conn down";
    };
    const seen = (env) => {
      if (typeof env.seq === "number" && (state.seq === null || env.seq > state.seq)) state.seq = env.seq;
      document.body.dataset.seq = state.seq;
    };
    const open = async () => {
      let track = Live.trackId;
      if (!track) {
        try {
          const r = await Live.api("GET", "/api/v1/status");
          track = Live.trackId = r.body.track_id;
        } catch (_) {
          show("offline: retrying", false);
          return retry();
        }
      }
      const q = new URLSearchParams({ track_id: track, channels: opts.channels.join(",") });
      if (opts.eventId) q.set("event_id", opts.eventId);
      q.set("from", state.seq === null ? "now" : String(state.seq));
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      const ws = new WebSocket(`${proto}//${location.host}/ws/v1/live?${q}`);
      state.ws = ws;
      ws.onopen = () => { state.retryMs = 250; show("live", true); };
      ws.onmessage = (m) => {
        let env;
        try { env = JSON.parse(m.data); } catch (_) { return; }
        if (env.v !== 1) { show(`unknown envelope version ${env.v}`, false); return; }
        if (env.kind === "error") {
          if (typeof env.payload.resume_from === "number") state.seq = env.payload.resume_from;
          return;
        }
        seen(env);
        if (env.kind === "snapshot") opts.onSnapshot?.(env.channel, env.payload, env);
        else if (env.kind === "event") opts.onEvent?.(env);
      };
      ws.onclose = () => { show("reconnecting", false); retry(); };
    };
    const retry = () => {
      const wait = state.retryMs;
      state.retryMs = Math.min(state.retryMs * 2, 5000);
      setTimeout(open, wait);
    };
    open();
    return state;
  },
};

// The token field on staff and technician pages.
function tokenBox() {
  const box = document.getElementById("token");
  if (!box) return;
  box.value = Live.token();
  box.addEventListener("change", () => localStorage.setItem("venue-token", box.value.trim()));
}
document.addEventListener("DOMContentLoaded", () => { Live.kiosk(); tokenBox(); });
