// keygate console: the only script. Everything works without it; it adds the copy button and wipes a
// shown-once key from the page when you leave it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const button = document.getElementById("copy-key");
  const field = document.getElementById("api-key");
  if (button && field) {
    const status = document.getElementById("copy-status");
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(field.value);
        status.textContent = "Copied.";
      } catch (_) {
        field.select();
        status.textContent = "Select the key and copy it (Ctrl+C).";
      }
    });
  }
  // Leaving the page (even into the back/forward cache) drops the key from it.
  window.addEventListener("pagehide", () => {
    const shown = document.getElementById("shown-once");
    if (shown) shown.remove();
  });
});
