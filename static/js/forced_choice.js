// Forced-choice trials (issue 17): keys 1/2 pick a query (Enter submits); the page's own response time — from
// the images being shown to the submit — goes with the answer as client_ms (the server keeps its own too).
(function () {
  "use strict";
  var form = document.getElementById("crowd-form");
  var field = document.getElementById("id_client_ms");
  if (!form || !field) return;
  var started = null;
  var images = form.querySelectorAll(".fc-trial img");
  var pending = images.length;
  function shown() { if (started === null) started = performance.now(); }
  function loaded() { pending -= 1; if (pending <= 0) shown(); }
  images.forEach(function (img) {
    if (img.complete) { loaded(); } else { img.addEventListener("load", loaded); img.addEventListener("error", loaded); }
  });
  if (pending <= 0) shown();
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var choice = event.key === "1" || event.key === "2" ? document.getElementById("answer-" + event.key) : null;
    if (choice && !choice.disabled) { choice.checked = true; choice.focus(); event.preventDefault(); }
  });
  form.addEventListener("submit", function () {
    if (started !== null) field.value = String(Math.round(performance.now() - started));
  });
})();
