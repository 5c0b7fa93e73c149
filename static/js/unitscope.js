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
