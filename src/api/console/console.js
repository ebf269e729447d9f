// pimage console: live updates from /console/events (Server-Sent Events). The browser
// resumes a dropped stream itself with Last-Event-ID; pages work without this script.
"use strict";
(function () {
  const body = document.body;
  const page = body.dataset.page;
  if (!document.getElementById("live")) return;
  const after = body.dataset.after;
  const url = "/console/events" + (after ? "?after=" + encodeURIComponent(after) : "");
  const symbols = { queued: "◷", running: "▶", complete: "✔", error: "✖", cancelled: "⊘" };
  const live = document.getElementById("live");
  const es = new EventSource(url);
  const setLive = (on) => { live.dataset.live = on ? "on" : "off"; live.textContent = on ? "live" : "live: reconnecting"; };
  es.onopen = () => setLive(true);
  es.onerror = () => setLive(false);

  function setState(el, state) {
    el.dataset.state = state;
    el.className = "state state-" + state;
    el.textContent = "";
    const s = document.createElement("span");
    s.setAttribute("aria-hidden", "true");
    s.textContent = symbols[state] || "?";
    el.append(s, " " + state);
  }
  function fmtBytes(n) {
    if (n >= 1073741824) return (n / 1073741824).toFixed(2) + " GiB";
    if (n >= 1048576) return (n / 1048576).toFixed(1) + " MiB";
    if (n >= 1024) return (n / 1024).toFixed(1) + " KiB";
    return n + " B";
  }
  function updateTicket(root, ev) {
    root.querySelectorAll('[data-field="state"]').forEach((el) => setState(el, ev.state));
    root.querySelectorAll('[data-field="percentage"]').forEach((el) => { el.textContent = ev.percentage; });
    root.querySelectorAll('[data-field="progress"]').forEach((el) => { el.value = ev.percentage; });
    root.querySelectorAll('[data-field="bytes"]').forEach((el) => { el.textContent = fmtBytes(ev.bytesLoaded); });
    root.querySelectorAll('[data-field="message"]').forEach((el) => { el.textContent = ev.message; });
    root.querySelectorAll("[data-offered-in]").forEach((f) => {
      f.hidden = !f.dataset.offeredIn.split(" ").includes(ev.state);
    });
    root.dataset.state = ev.state;
    if (ev.kind === "deleted") root.dataset.deleted = "true";
  }

  es.addEventListener("ticket", (e) => {
    const ev = JSON.parse(e.data);
    if (page === "overview") {
      const bump = (state, by) => {
        const el = document.querySelector('[data-count="' + state + '"]');
        if (el) el.textContent = String(Math.max(0, Number(el.textContent) + by));
      };
      if (ev.kind === "created") bump(ev.state, 1);
      else if (ev.kind === "deleted") bump(ev.state, -1);
      else if (ev.oldState && ev.oldState !== ev.state) { bump(ev.oldState, -1); bump(ev.state, 1); }
    } else if (page === "tickets") {
      const row = document.querySelector('tr[data-ticket="' + ev.ticketId + '"]');
      if (row) updateTicket(row, ev);
    } else if (page === "ticket") {
      const t = document.getElementById("ticket");
      if (t && t.dataset.ticket === String(ev.ticketId)) updateTicket(t, ev);
    } else if (page === "group") {
      const row = document.querySelector('#targets tr[data-ticket="' + ev.ticketId + '"]');
      if (row) updateTicket(row, ev);
      // The aggregate, cloud ids and targets added later come from the server's summary.
      if (row || ev.kind === "created") refreshGroup();
    }
  });

  let refreshing = null;
  function refreshGroup() {
    if (refreshing) return;
    refreshing = setTimeout(() => {
      const g = document.getElementById("group-summary");
      fetch(g.dataset.src, { credentials: "same-origin" })
        .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
        .then((html) => {
          const s = new DOMParser().parseFromString(html, "text/html").getElementById("group-summary");
          if (s) g.replaceWith(s);
        })
        .catch(() => {})
        .finally(() => { refreshing = null; });
    }, 300);
  }

  if (page === "workers") {
    const tbody = document.querySelector("#workers tbody");
    const none = document.getElementById("no-workers");
    const cell = (row, field) => row.querySelector('[data-field="' + field + '"]');
    es.addEventListener("worker", (e) => {
      const w = JSON.parse(e.data);
      let row = Array.from(tbody.rows).find((r) => r.dataset.worker === w.worker);
      if (w.gone) {
        if (row) row.remove();
      } else {
        if (!row) {
          row = tbody.insertRow();
          row.dataset.worker = w.worker;
          row.insertCell().textContent = w.worker;
          for (const f of ["host", "pid", "version", "slots", "tickets", "beat"]) row.insertCell().dataset.field = f;
        }
        cell(row, "host").textContent = w.host;
        cell(row, "pid").textContent = w.pid;
        cell(row, "version").textContent = w.version;
        cell(row, "slots").textContent = w.slotsUsed + " of " + w.slotsTotal;
        const tickets = cell(row, "tickets");
        tickets.textContent = "";
        for (const id of w.tickets) {
          const a = document.createElement("a");
          a.href = "/console/tickets/" + id;
          a.textContent = id;
          tickets.append(a, " ");
        }
        const beat = cell(row, "beat");
        beat.dataset.beatAt = w.beatAt;
        beat.textContent = new Date(w.beatAt).toISOString().replace("T", " ").slice(0, 19) + " UTC";
      }
      none.hidden = tbody.rows.length > 0;
    });
    // A worker killed without a goodbye goes silent: drop it after 20 s (no query needed).
    setInterval(() => {
      for (const row of Array.from(tbody.rows)) {
        const at = cell(row, "beat") && cell(row, "beat").dataset.beatAt;
        if (at && Date.now() - Date.parse(at) > 20000 && !cell(row, "tickets").textContent.trim()) row.remove();
      }
      none.hidden = tbody.rows.length > 0;
    }, 5000);
  }

  if (page === "ticket") {
    const g = document.getElementById("glance");
    if (g && g.dataset.src) {
      fetch(g.dataset.src, { credentials: "same-origin" })
        .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
        .then((html) => {
          const doc = new DOMParser().parseFromString(html, "text/html");
          const s = doc.getElementById("glance-state");
          if (s) g.replaceChildren(s);
        })
        .catch(() => {});
    }
  }
})();
