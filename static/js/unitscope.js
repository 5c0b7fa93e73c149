// Small progressive enhancements; every page works without this file.
document.addEventListener("htmx:responseError", (event) => {
  // A failed poll or post should say so rather than leave a stale page.
  const target = event.detail.target;
  if (target && !target.querySelector(".poll-error")) {
    const note = document.createElement("div");
    note.className = "form-error poll-error";
    note.setAttribute("role", "alert");
    note.textContent = `The server answered ${event.detail.xhr.status}; the page will retry.`;
    target.prepend(note);
  }
});

// Filter menus that apply on change (`data-autosubmit`); their forms still have a submit path without this file.
document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
  select.addEventListener("change", () => select.form.submit());
});

// Dataset image page: the mask overlay buttons swap the image.
document.querySelectorAll(".overlay-choice").forEach((button, _, buttons) => {
  button.addEventListener("click", () => {
    document.getElementById("overlay-image").src = button.dataset.src;
    buttons.forEach((other) => other.setAttribute("aria-pressed", other === button));
  });
});

// Crowd review page: "Select all", and the picked assignments sent as one comma-separated field.
const reviewForm = document.getElementById("review-form");
if (reviewForm) {
  const reviewIds = document.getElementById("review-ids");
  document.getElementById("review-all").addEventListener("click", () => {
    reviewForm.querySelectorAll(".review-pick").forEach((box) => { box.checked = true; });
  });
  reviewForm.addEventListener("submit", () => {
    reviewIds.value = Array.from(reviewForm.querySelectorAll(".review-pick:checked"), (box) => box.value).join(",");
  });
}
