// Baton console: live updates over server-sent events. Every piece of
// markup it inserts comes from the server, already escaped.
(function () {
  "use strict";
  if (!window.EventSource) {
    return;
  }
  var rows = document.querySelector("[data-live-gates]");
  if (rows) {
    var status = document.getElementById("live");
    var queued = false;
    var refresh = function () {
      if (queued) {
        return;
      }
      queued = true;
      setTimeout(function () {
        queued = false;
        fetch(rows.getAttribute("data-live-gates"), { credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.text() : null; })
          .then(function (html) {
            if (html !== null) {
              rows.innerHTML = html;
              if (status) {
                status.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
              }
            }
          });
      }, 150);
    };
    var feed = new EventSource("/ui/gates/events");
    feed.addEventListener("gate", refresh);
    // After a reconnect the page may have missed changes.
    feed.addEventListener("open", refresh);
  }
  var watched = document.querySelector("[data-watch-gate]");
  if (watched && watched.getAttribute("data-watch-gate")) {
    var id = watched.getAttribute("data-watch-gate");
    var one = new EventSource("/ui/gates/events?gate=" + encodeURIComponent(id));
    one.addEventListener("gate", function (e) {
      var d = {};
      try { d = JSON.parse(e.data); } catch (_) { /* a lag notice */ }
      if (d.status === "pending") {
        return;
      }
      one.close();
      window.location.reload();
    });
  }
})();
