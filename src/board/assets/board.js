// transfer-guard board: countdowns, the live queue over Server-Sent Events,
// and the officer id remembered in open mode. No library, no build step.
(() => {
  "use strict";
  // The server's clock, so countdowns agree with the hold's expiry.
  const skew = Date.now() - Number(document.body.dataset.now || 0) * 1000;
  const serverNow = () => Date.now() - skew;

  function tick() {
    for (const el of document.querySelectorAll(".countdown")) {
      const left = Math.floor((Number(el.dataset.expires) * 1000 - serverNow()) / 1000);
      el.textContent = left <= 0 ? el.dataset.expired : Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0");
    }
  }
  tick();
  setInterval(tick, 1000);

  for (const input of document.querySelectorAll("input[data-remember]")) {
    const key = "transfer-guard." + input.dataset.remember;
    if (!input.value) input.value = localStorage.getItem(key) || "";
    input.form.addEventListener("submit", () => localStorage.setItem(key, input.value));
  }

  // Every event as it arrived (before de-duplication), for the browser tests.
  window.boardArrivals = [];
  const status = document.getElementById("live");

  function listen(url, onAlert) {
    const seen = new Set();
    const source = new EventSource(url);
    // Give the connection back when leaving: a browser keeps few per server.
    window.addEventListener("pagehide", () => source.close());
    source.addEventListener("alert", (e) => {
      const d = JSON.parse(e.data);
      window.boardArrivals.push(d.cursor);
      if (seen.has(d.cursor)) return;
      seen.add(d.cursor);
      onAlert(d);
    });
    source.addEventListener("reset", () => location.reload());
    source.addEventListener("open", () => {
      if (!status) return;
      status.textContent = status.dataset.live;
      status.classList.remove("down");
    });
    source.addEventListener("error", () => {
      if (!status) return;
      status.textContent = status.dataset.reconnecting;
      status.classList.add("down");
    });
  }

  const table = document.getElementById("queue");
  if (table) {
    const body = table.tBodies[0];
    const empty = document.getElementById("empty");
    const firstPage = table.dataset.firstPage === "true";
    const filters = table.dataset.filters;
    listen("/events?cursor=" + table.dataset.cursor + (filters ? "&" + filters : ""), (d) => {
      const existing = document.getElementById("alert-" + d.alert);
      if (!d.matches) {
        if (existing) existing.remove();
      } else {
        const t = document.createElement("template");
        t.innerHTML = d.row.trim();
        const row = t.content.firstElementChild;
        if (existing) existing.replaceWith(row);
        else if (firstPage) body.prepend(row);
      }
      empty.hidden = body.rows.length > 0;
      tick();
    });
  }

  const changed = document.getElementById("changed");
  if (changed) {
    listen("/events?state=any&cursor=" + changed.dataset.cursor, (d) => {
      if (d.alert === changed.dataset.alert) changed.hidden = false;
    });
  }
})();
