// autosnap dashboard: live job updates over server-sent events. No inline script:
// the Content-Security-Policy forbids it.
"use strict";
(function () {
  function text(el, s) { if (el) { el.textContent = s; } }
  function cell(tr, s, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    td.textContent = s;
    tr.appendChild(td);
    return td;
  }
  function ts(iso) {
    if (!iso || iso.indexOf("0001-") === 0) { return "—"; }
    return iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z");
  }
  // progress is "done/total", or "done" when the total is not known yet.
  function progress(ev) { return ev.total ? ev.done + "/" + ev.total : String(ev.done || 0); }
  function setOutcome(el, outcome) {
    if (!el) { return; }
    el.textContent = outcome;
    el.className = "outcome-" + outcome;
  }

  // runs table: a row per job; new jobs appear at the top.
  function onRunsTable(ev) {
    var tbody = document.querySelector("#runs tbody");
    if (!tbody) { return; }
    var row = document.getElementById("job-" + ev.job);
    if (!row && ev.type === "job-start" && document.getElementById("runs-page")) {
      var empty = tbody.querySelector("tr.empty");
      if (empty) { empty.remove(); }
      row = document.createElement("tr");
      row.id = "job-" + ev.job;
      row.className = "job outcome-running";
      row.dataset.job = ev.job;
      var a = document.createElement("a");
      a.href = "/runs/" + ev.job;
      a.textContent = ev.job;
      var td = document.createElement("td");
      td.appendChild(a);
      row.appendChild(td);
      cell(row, ev.policy || "");
      cell(row, (ev.kind || "") + (ev.dry_run ? " (dry run)" : ""));
      cell(row, ev.trigger || "");
      cell(row, ts(ev.time));
      cell(row, "…", "duration");
      var oc = cell(row, "", "outcome");
      var sp = document.createElement("span");
      oc.appendChild(sp);
      setOutcome(sp, "running");
      cell(row, progress(ev), "guests");
      cell(row, "", "errors");
      tbody.insertBefore(row, tbody.firstChild);
    }
    if (!row) { return; }
    if (ev.type === "guest") {
      text(row.querySelector(".guests"), progress(ev));
      if (ev.error) {
        var d = document.createElement("div");
        d.textContent = ev.guest + ": " + ev.error;
        row.querySelector(".errors").appendChild(d);
      }
    }
    if (ev.type === "job-end") {
      row.dataset.outcome = ev.outcome;
      row.className = "job outcome-" + ev.outcome;
      setOutcome(row.querySelector(".outcome span"), ev.outcome);
      text(row.querySelector(".guests"), String(ev.total));
      text(row.querySelector(".duration"), "done");
      if (ev.error) {
        var e = document.createElement("div");
        e.textContent = ev.error;
        row.querySelector(".errors").appendChild(e);
      }
    }
  }

  // one run's page.
  function onRunPage(ev) {
    var run = document.getElementById("run");
    if (!run || run.dataset.job !== String(ev.job)) { return; }
    if (ev.type === "guest") {
      text(document.getElementById("run-done"), progress(ev));
      var tbody = document.querySelector("#run-guests tbody");
      var tr = document.createElement("tr");
      tr.className = "guestrun";
      tr.dataset.guest = ev.guest;
      cell(tr, ev.guest);
      cell(tr, "");
      cell(tr, ev.outcome, "outcome-" + ev.outcome);
      for (var i = 0; i < 5; i++) { cell(tr, ""); }
      cell(tr, ev.error || "", "error");
      tbody.appendChild(tr);
    }
    if (ev.type === "job-end") {
      run.dataset.outcome = ev.outcome;
      setOutcome(document.getElementById("run-outcome"), ev.outcome);
      text(document.getElementById("run-ended"), ts(ev.time));
      if (ev.error) {
        var e = document.createElement("span");
        e.className = "error";
        e.id = "run-error";
        e.textContent = ev.error;
        run.appendChild(document.createElement("br"));
        run.appendChild(e);
      }
    }
  }

  function live() {
    if (document.body.dataset.live !== "1" || !window.EventSource) { return; }
    var state = document.getElementById("live-state");
    var es = new EventSource("/events");
    es.onopen = function () { text(state, "live"); document.body.dataset.sse = "open"; };
    es.onerror = function () { text(state, "reconnecting…"); };
    es.addEventListener("job", function (m) {
      var ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      onRunsTable(ev);
      onRunPage(ev);
    });
    window.addEventListener("pagehide", function () { es.close(); });
  }

  // The overview's filters apply as soon as one changes.
  function filters() {
    var f = document.getElementById("filters");
    if (!f) { return; }
    f.querySelectorAll("select").forEach(function (s) {
      s.addEventListener("change", function () { f.submit(); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { live(); filters(); });
})();
