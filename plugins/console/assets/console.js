// The console's only script (served from this origin; the Content-Security-Policy allows no
// other). Pages read without it; it adds what needs a browser: signing in and out, refreshing the
// live list and an open call, placing a call, and times in the browser's time zone.
"use strict";

(function () {
  /** How often an open page asks for news, in milliseconds (one small request each time). */
  const REFRESH_MS = 3000;

  /** Shows each <time datetime> in the browser's time zone; the UTC value stays on hover. */
  function localTimes(root) {
    for (const el of root.querySelectorAll("time[datetime]")) {
      if (el.dataset.local) continue;
      const at = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(at.getTime())) continue;
      el.textContent = at.toLocaleString(undefined, {
        year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit",
      });
      el.dataset.local = "1";
    }
  }

  /** The error message of a JSON error answer, or a generic one. */
  async function errorOf(res) {
    try {
      const body = await res.json();
      if (body && body.error) return body.error;
    } catch (_) { /* not JSON */ }
    return { message: "the server answered " + res.status };
  }

  /** Signed out (or the session expired): to the sign-in page, coming back here afterwards. */
  function toSignIn() {
    const here = location.pathname + location.search;
    location.assign("/console/login?next=" + encodeURIComponent(here));
  }

  /**
   * Keeps part of a page current: every REFRESH_MS (while the page is visible) asks urlOf() —
   * until it answers "" (an ended call) — sending the entity tag of what the page shows, so an
   * unchanged part costs a 304 without a body; new content goes to onChange.
   */
  function keepFresh(urlOf, onChange) {
    let tag = null;
    const status = document.getElementById("live-status");
    function say(text, bad) {
      if (!status) return;
      status.textContent = text;
      status.classList.toggle("error", bad);
    }
    async function tick() {
      const url = urlOf();
      if (!url) return;
      if (document.visibilityState === "visible") {
        try {
          const headers = tag ? { "If-None-Match": tag } : {};
          const res = await fetch(url, { headers, cache: "no-store", credentials: "same-origin" });
          if (res.status === 401) return toSignIn();
          if (res.status === 200) {
            tag = res.headers.get("ETag");
            onChange(await res.text());
          }
          if (res.status === 200 || res.status === 304) {
            say("Live: checked at " + new Date().toLocaleTimeString() + ".", false);
          } else {
            say("Cannot refresh (" + (await errorOf(res)).message + "); retrying.", true);
          }
        } catch (_) {
          say("The server cannot be reached; retrying.", true);
        }
      }
      setTimeout(tick, REFRESH_MS);
    }
    setTimeout(tick, REFRESH_MS);
  }

  function liveList() {
    const rows = document.getElementById("call-rows");
    if (!rows) return;
    keepFresh(() => rows.dataset.refresh, (html) => {
      rows.innerHTML = html; // rendered and escaped by the server
      localTimes(rows);
    });
  }

  function liveCall() {
    let section = document.getElementById("trace");
    if (!section) return;
    keepFresh(() => section.dataset.refresh || "", (html) => {
      const open = new Set(Array.from(section.querySelectorAll("details[open]"), (d) => d.dataset.key));
      const holder = document.createElement("div");
      holder.innerHTML = html; // rendered and escaped by the server
      const fresh = holder.querySelector("#trace");
      if (!fresh) return;
      for (const d of fresh.querySelectorAll("details")) d.open = open.has(d.dataset.key);
      section.replaceWith(fresh);
      section = fresh;
      localTimes(section);
    });
  }

  function signIn() {
    const form = document.getElementById("sign-in");
    if (!form) return;
    const error = document.getElementById("sign-in-error");
    form.querySelector("button").disabled = false;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      const data = new FormData(form);
      try {
        const res = await fetch("/api/auth/login", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ email: data.get("email"), password: data.get("password") }),
          credentials: "same-origin",
        });
        if (res.ok) return location.assign(form.dataset.next || "/console/calls");
        error.textContent = (await errorOf(res)).message;
      } catch (_) {
        error.textContent = "The server cannot be reached.";
      }
    });
  }

  function signOut() {
    const button = document.getElementById("sign-out");
    if (!button) return;
    button.addEventListener("click", async () => {
      let problem;
      try {
        const res = await fetch("/api/auth/logout", { method: "POST", credentials: "same-origin" });
        if (res.ok || res.status === 401) return location.assign("/console/login");
        problem = (await errorOf(res)).message;
      } catch (_) {
        problem = "the server cannot be reached";
      }
      // Still signed in: say so rather than pretend.
      const note = document.createElement("p");
      note.className = "error";
      note.setAttribute("role", "alert");
      note.textContent = "Not signed out: " + problem;
      document.querySelector("main").prepend(note);
    });
  }

  function placeCall() {
    const form = document.getElementById("outbound");
    if (!form) return;
    const result = document.getElementById("outbound-result");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button");
      button.disabled = true;
      result.textContent = "Calling Twilio…";
      result.classList.remove("error");
      const data = new FormData(form);
      try {
        const res = await fetch(form.action, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          // The lead id as typed: "007" stays "007".
          body: JSON.stringify({ to: data.get("to"), lead_id: String(data.get("lead_id")) }),
          credentials: "same-origin",
        });
        if (res.status === 401) return toSignIn();
        if (res.status === 201) {
          const placed = await res.json();
          // By its REQ id: the page exists even if the CallSid is not on the record yet.
          return location.assign("/console/calls/" + encodeURIComponent(placed.req_id));
        }
        const error = await errorOf(res);
        result.textContent = "Not placed: " + error.message;
        result.classList.add("error");
        if (error.req_id) {
          const link = document.createElement("a");
          link.href = "/console/calls/" + encodeURIComponent(error.req_id);
          link.textContent = " See the request's timeline (REQ=" + error.req_id + ").";
          result.append(link);
        }
      } catch (_) {
        result.textContent = "The server cannot be reached.";
        result.classList.add("error");
      } finally {
        button.disabled = false;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    localTimes(document);
    liveList();
    liveCall();
    signIn();
    signOut();
    placeCall();
  });
})();
