// Moorage dashboard: live updates over server-sent events, and forms that post without
// leaving the page. Vendored, no dependencies, no build step.
(function () {
  "use strict";
  var pending = null;

  function liveRegions() { return document.querySelectorAll("[data-live][id]"); }

  function wants(kind) {
    var regions = liveRegions();
    for (var i = 0; i < regions.length; i++) {
      var prefixes = regions[i].getAttribute("data-live").split(" ");
      for (var j = 0; j < prefixes.length; j++) {
        if (prefixes[j] && kind.indexOf(prefixes[j]) === 0) return true;
      }
    }
    return false;
  }

  // At most one refresh a second, however many events arrive.
  function scheduleRefresh() {
    if (pending !== null) return;
    pending = setTimeout(refresh, 1000);
  }

  function refresh() {
    pending = null;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text === null) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        liveRegions().forEach(function (el) {
          var fresh = doc.getElementById(el.id);
          if (fresh) el.innerHTML = fresh.innerHTML;
        });
      })
      .catch(function () {});
  }

  function setUnitStates(machine, units) {
    Object.keys(units).forEach(function (name) {
      var key = name + "@" + machine;
      document.querySelectorAll("[data-unit-state]").forEach(function (el) {
        if (el.getAttribute("data-unit-state") !== key) return;
        el.textContent = units[name];
        el.className = "state-" + units[name];
      });
    });
  }

  // A task run's log: appended from where the page left off when its run writes.
  var logTimer = null;
  function followLog(again) {
    var pre = document.getElementById("log");
    if (!pre || !pre.hasAttribute("data-run") || (logTimer !== null && !again)) return;
    logTimer = setTimeout(function () {
      var url = "/ui/tasks/runs/" + encodeURIComponent(pre.getAttribute("data-run")) +
        "/log?last_seen=" + encodeURIComponent(pre.getAttribute("data-cursor") || "");
      fetch(url, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (part) {
          logTimer = null;
          if (!part) return;
          var more = part.last_seen !== pre.getAttribute("data-cursor") && part.log.length > 0;
          if (part.log) pre.appendChild(document.createTextNode(part.log));
          pre.setAttribute("data-cursor", part.last_seen);
          pre.scrollTop = pre.scrollHeight;
          if (more && part.log.length >= 65536) followLog(true);
        })
        .catch(function () { logTimer = null; });
    }, 300);
  }
  followLog(false);  // catch up with what was written before the event stream opened

  function onEvent(message) {
    var ev;
    try { ev = JSON.parse(message.data); } catch (e) { return; }
    if (ev.kind === "unit.reported" && ev.data && ev.data.units) setUnitStates(ev.subject, ev.data.units);
    if (ev.kind === "resync" || wants(ev.kind)) scheduleRefresh();
    if (ev.kind === "resync" || ev.kind.indexOf("task.run.") === 0) {
      var pre = document.getElementById("log");
      if (pre && (ev.kind === "resync" || pre.getAttribute("data-run") === ev.subject)) followLog(false);
    }
    document.dispatchEvent(new CustomEvent("moorage:event", { detail: ev }));
  }

  if (window.EventSource) {
    var source = new EventSource("/ui/events");
    source.onmessage = onEvent;
  }

  function flash(text) {
    var el = document.getElementById("flash");
    if (el) el.textContent = text;
  }

  // Forms marked data-async post in the background; the page stays, live events update it.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!form.hasAttribute || !form.hasAttribute("data-async")) return;
    e.preventDefault();
    fetch(form.action, { method: "POST", body: new URLSearchParams(new FormData(form)), credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) {
          return r.text().then(function (t) {
            var message = t;
            try { var body = JSON.parse(t); message = (body.error && body.error.message) || body.error || t; } catch (e) {}
            flash("Refused (" + r.status + "): " + message);
          });
        }
        flash("");
        scheduleRefresh();
      })
      .catch(function (err) { flash("Request failed: " + err); });
  });
})();
