// The console's own script: step tabs (with the keyboard), Back/Next, the composer's fields, Advanced Mode,
// change mode's fields, inserting a query column into a template. Everything else is server-rendered; htmx does the live parts.
(function () {
  "use strict";

  function selectStep(key, focusPanel) {
    const tabs = document.querySelectorAll('[role="tab"][data-step]');
    if (!tabs.length) return;
    tabs.forEach(function (tab) {
      const on = tab.dataset.step === key;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      const panel = document.getElementById(tab.getAttribute("aria-controls"));
      if (panel) panel.hidden = !on;
    });
    document.querySelectorAll("[data-current-step]").forEach(function (input) { input.value = key; });
    const url = new URL(window.location.href);
    url.searchParams.set("step", key);
    url.searchParams.delete("notice");
    window.history.replaceState(null, "", url);
    if (focusPanel) {
      const panel = document.getElementById("panel-" + key);
      const first = panel && panel.querySelector("input:not([type=hidden]):not([disabled]), select:not([disabled]), textarea:not([disabled])");
      (first || panel).focus();
    }
  }

  function showComposerFields() {
    const every = document.getElementById("every");
    if (!every) return;
    const fields = JSON.parse(every.dataset.composerFields)[every.value] || [];
    document.querySelectorAll("[data-composer]").forEach(function (box) {
      box.hidden = fields.indexOf(box.dataset.composer) < 0;
    });
  }

  function showRecurrence() {
    const recurrence = document.getElementById("recurrence");
    if (!recurrence) return;
    document.querySelectorAll("[data-when-recurrence]").forEach(function (box) {
      box.hidden = box.dataset.whenRecurrence !== recurrence.value;
    });
  }

  function applyAdvancedMode() {
    const advanced = document.getElementById("advanced");
    const cron = document.getElementById("cron");
    const composer = document.getElementById("composer");
    if (!advanced || !cron || !composer) return;
    cron.readOnly = !advanced.checked;
    composer.disabled = advanced.checked;
  }

  function showAuthFields() {
    const auth = document.getElementById("auth_type");
    if (!auth) return;
    document.querySelectorAll("[data-auth]").forEach(function (box) { box.hidden = box.dataset.auth !== auth.value; });
  }

  // Change mode's templates per kind and its bound on removals apply to change mode only: not sent in full mode.
  function applySyncMode() {
    const mode = document.getElementById("sync_mode");
    const box = document.getElementById("sync-changes");
    if (!mode || !box) return;
    box.disabled = mode.value !== "changes";
    box.hidden = mode.value !== "changes";
  }

  document.addEventListener("click", function (event) {
    const tab = event.target.closest('[role="tab"][data-step]');
    if (tab) { event.preventDefault(); selectStep(tab.dataset.step, false); return; }
    const go = event.target.closest("[data-goto]");
    if (go) { event.preventDefault(); selectStep(go.dataset.goto, true); return; }
    const insert = event.target.closest("[data-insert]");
    if (insert) {
      const target = document.getElementById(insert.dataset.target);
      if (!target || target.disabled) return;
      const at = target.selectionStart || 0;
      target.value = target.value.slice(0, at) + insert.dataset.insert + target.value.slice(target.selectionEnd || at);
      target.focus();
      target.selectionStart = target.selectionEnd = at + insert.dataset.insert.length;
    }
  });

  // Arrow keys move between the step tabs (the ARIA tabs pattern); Tab leaves the tab list.
  document.addEventListener("keydown", function (event) {
    const tab = event.target.closest && event.target.closest('[role="tab"][data-step]');
    if (!tab || (event.key !== "ArrowRight" && event.key !== "ArrowLeft")) return;
    const tabs = Array.from(document.querySelectorAll('[role="tab"][data-step]'));
    const next = tabs[(tabs.indexOf(tab) + (event.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
    event.preventDefault();
    selectStep(next.dataset.step, false);
    next.focus();
  });

  document.addEventListener("change", function (event) {
    if (event.target.id === "every") showComposerFields();
    if (event.target.id === "recurrence") showRecurrence();
    if (event.target.id === "advanced") applyAdvancedMode();
    if (event.target.id === "auth_type") showAuthFields();
    if (event.target.id === "sync_mode") applySyncMode();
  });

  // htmx swaps no 4xx/5xx answer; a part marked data-swap-unavailable shows its 503 all the same: the part saying
  // why it could not be read now (the dead letters' part: Kafka slow or down), not "Reading…" for ever. Only an
  // answer that says it is that part (X-Console-Part: its id), never another 503 (the console's whole error page).
  document.addEventListener("htmx:beforeSwap", function (event) {
    const target = event.detail.target;
    const xhr = event.detail.xhr;
    if (xhr.status === 503 && target && target.hasAttribute("data-swap-unavailable") &&
        target.id && xhr.getResponseHeader("X-Console-Part") === target.id) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    showComposerFields();
    showRecurrence();
    applyAdvancedMode();
    showAuthFields();
    applySyncMode();
    // The refusal's message gets the focus (read out first): the problems' summary, else a stale page's notice.
    const problems = document.getElementById("problems") || document.getElementById("stale");
    if (problems) problems.focus();
  });
})();
