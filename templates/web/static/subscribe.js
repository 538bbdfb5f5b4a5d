// Guess the reader's time zone; they can still change it.
(function () {
  var field = document.getElementById("timezone");
  if (field && field.dataset.guess !== "no" && field.value === "UTC") {
    try { field.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) {}
  }
})();
