// The console's preview: switch the digest frame between phone, 600 px and desktop width.
(function () {
  var frame = document.getElementById("preview-frame");
  if (!frame) { return; }
  var buttons = document.querySelectorAll("button.width");
  buttons.forEach(function (button) {
    button.addEventListener("click", function () {
      frame.className = "preview-frame width-" + button.dataset.width;
      buttons.forEach(function (other) {
        other.setAttribute("aria-pressed", other === button ? "true" : "false");
      });
    });
  });
})();
