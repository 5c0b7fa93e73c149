// Crowd HIT pages: note a paste into the description (posted as "pasted", a signal of automated answers),
// Y/N keys for yes/no, and hand a finished MTurk HIT back at once when there is no feedback to read.
(function () {
  "use strict";
  var form = document.getElementById("crowd-form");
  if (form) {
    var description = document.getElementById("id_description");
    var pasted = document.getElementById("id_pasted");
    if (description && pasted) {
      description.addEventListener("paste", function () { pasted.value = "True"; });
      description.addEventListener("drop", function () { pasted.value = "True"; });
    }
    document.addEventListener("keydown", function (event) {
      var target = event.target;
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      if (target && (target.tagName === "INPUT" && target.type !== "radio" || target.tagName === "TEXTAREA")) return;
      var key = event.key.toLowerCase();
      var choice = key === "y" ? document.getElementById("answer-yes") : key === "n" ? document.getElementById("answer-no") : null;
      if (choice) { choice.checked = true; choice.focus(); event.preventDefault(); }
    });
  }
  var handoff = document.getElementById("handoff-form");
  if (handoff && handoff.dataset.autosubmit === "1") {
    handoff.submit();
  }
})();
