// Live updates: the node's stream (/ui/live) sends each event of the activity stream and a tick
// every few seconds; on either, the page's <main> is fetched again and swapped in. Without
// this script every page still works, reloaded by hand.
(function () {
  "use strict";
  var main = document.querySelector("main[data-live]");
  if (!main || !window.EventSource || !window.fetch) return;
  // After an action's POST, the page's own address: a reload then shows it, posting nothing.
  var url = main.dataset.page || location.href;
  if (main.dataset.page && history.replaceState) history.replaceState(null, "", url);
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(url, { headers: { "X-Roo-Part": "main" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.redirected || r.status === 401) { location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) { if (html !== null) main.innerHTML = html; })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }
  var live = new EventSource("/ui/live?since=" + encodeURIComponent(main.dataset.since || ""));
  live.onopen = function () { document.body.dataset.live = "on"; };
  live.onerror = function () { document.body.dataset.live = "off"; };
  live.onmessage = refresh;
  live.addEventListener("tick", refresh);
  // A browser holds six connections to a node: one left streaming by a page gone would keep
  // the next pages waiting.
  window.addEventListener("pagehide", function () { live.close(); });
})();
