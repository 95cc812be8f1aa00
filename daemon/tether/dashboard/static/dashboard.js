// The dashboard's live parts. The server renders every value (escaped); this file only
// ticks the countdowns and adds the rows the server renders for new events.
"use strict";

(function () {
  // The server's clock, not the browser's: the page says what time it was rendered at.
  const offset = parseFloat(document.body.dataset.now) * 1000 - Date.now();

  function span(ms) {
    const s = Math.floor(ms / 1000);
    if (s < 120) return s + "s";
    if (s < 7200) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }

  function tick() {
    const now = Date.now() + offset;
    for (const el of document.querySelectorAll(".countdown[data-deadline]")) {
      const left = parseFloat(el.dataset.deadline) * 1000 - now;
      el.textContent = left > 0 ? "in " + span(left) : span(-left) + " ago";
      el.classList.toggle("overdue", left <= 0);
      el.classList.toggle("soon", left > 0 && left < 60000);
    }
  }

  const FOLLOW_EVERY = 1000;
  const KEEP_ROWS = 500;
  const FINAL = ["completed", "failed", "cancelled", "incomplete", "lost"];

  function follow(tbody) {
    let after = tbody.dataset.after;
    async function poll() {
      const params = new URLSearchParams({ after: after });
      if (tbody.dataset.kind) params.set("kind", tbody.dataset.kind);
      if (tbody.dataset.responseId) params.set("response_id", tbody.dataset.responseId);
      try {
        const reply = await fetch("/events/rows?" + params.toString(), { cache: "no-store" });
        if (reply.ok) {
          const rows = await reply.text();
          after = reply.headers.get("X-Last-Event-Id") || after;
          if (rows.trim()) {
            for (const empty of tbody.querySelectorAll(".empty")) empty.closest("tr").remove();
            tbody.insertAdjacentHTML("afterbegin", rows);
            while (tbody.rows.length > KEEP_ROWS) tbody.deleteRow(-1);
            const moved = tbody.querySelector("tr[data-to]:not([data-to=''])");
            const status = document.querySelector("[data-live-status]");
            if (moved && status) {
              status.textContent = moved.dataset.to;
              status.className = "status status-" + moved.dataset.to;
              if (FINAL.includes(moved.dataset.to)) {
                for (const deadline of document.querySelectorAll("[data-live-deadline]")) deadline.remove();
              }
            }
          }
        }
      } catch (err) {
        // The daemon restarting, or the network: try again at the next turn.
      }
      setTimeout(poll, FOLLOW_EVERY);
    }
    setTimeout(poll, FOLLOW_EVERY);
  }

  tick();
  setInterval(tick, 1000);
  for (const tbody of document.querySelectorAll("tbody[data-follow]")) follow(tbody);
})();
