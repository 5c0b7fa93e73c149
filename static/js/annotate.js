// The expert annotation page, operable with the keyboard alone (no build step, no dependencies):
// 1–5 choose an answer (a yes moves to the concept-name field), Enter submits, Esc leaves the name
// field, M opens "my answers". On "my answers", the element marked data-autofocus takes the focus.
(function () {
  "use strict";
  const autofocus = document.querySelector("[data-autofocus]");
  if (autofocus) autofocus.focus();

  const form = document.getElementById("annotate-form");
  if (!form) return;
  const concept = form.querySelector("input[name=concept]");
  const radios = Array.from(form.querySelectorAll("input[name=answer]"));
  let submitting = false;

  function chosen() {
    return radios.find((radio) => radio.checked) || null;
  }

  function sync() {
    const radio = chosen();
    const yes = Boolean(radio && radio.dataset.yes === "true");
    concept.required = yes;
    form.classList.toggle("needs-concept", yes);
  }

  function submit() {
    if (submitting) return;
    if (!chosen()) {
      radios[0].focus();
      radios[0].reportValidity();
      return;
    }
    if (concept.required && !concept.value.trim()) {
      concept.focus();
      concept.reportValidity();
      return;
    }
    form.requestSubmit();
  }

  radios.forEach((radio) => radio.addEventListener("change", sync));
  sync();

  form.addEventListener("submit", (event) => {
    if (submitting) {
      event.preventDefault();
      return;
    }
    if (concept.required && !concept.value.trim()) {
      event.preventDefault();
      concept.focus();
      concept.reportValidity();
      return;
    }
    submitting = true;
    form.querySelectorAll("button[type=submit]").forEach((button) => { button.disabled = true; });
  });

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    const target = event.target;
    if (target === concept || target.matches("textarea, select, input[type=text], input[type=password]")) {
      if (event.key === "Escape") {
        event.preventDefault();
        target.blur();
      } else if (event.key === "Enter" && target === concept) {
        event.preventDefault();
        submit();
      }
      return;
    }
    if (/^[1-5]$/.test(event.key)) {
      const radio = radios[Number(event.key) - 1];
      if (!radio) return;
      event.preventDefault(); // the digit must not be typed into the field that takes the focus
      radio.checked = true;
      sync();
      if (radio.dataset.yes === "true") {
        concept.focus();
        concept.select();
      } else {
        radio.focus();
      }
    } else if (event.key === "Enter") {
      if (target.closest("a, button, summary")) return; // links and buttons keep their own Enter
      event.preventDefault();
      submit();
    } else if (event.key === "m" || event.key === "M") {
      event.preventDefault();
      window.location.href = form.dataset.answersUrl;
    }
  });
})();
