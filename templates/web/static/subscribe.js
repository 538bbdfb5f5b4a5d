// The reader forms, enhanced; without this script they work the same, all fields shown.
// - Intl.DateTimeFormat: the browser's time zone is preselected on sign-up.
// - A search box narrows the time zone list by city, country or old zone name.
// - "Send at" and "Weekly on" show only for the cadences they apply to.
(function () {
  "use strict";
  var select = document.getElementById("timezone");

  function findZone(name) {
    if (!select || !name) return null;
    for (var i = 0; i < select.options.length; i++) {
      var option = select.options[i];
      var also = (option.getAttribute("data-also") || "").split(" ");
      if (option.value === name || also.indexOf(name) !== -1) return option;
    }
    return null;
  }

  // 1. The browser's guess, on a fresh sign-up form only.
  if (select && select.getAttribute("data-guess") === "yes" && select.value === "UTC") {
    try {
      var guessed = findZone(Intl.DateTimeFormat().resolvedOptions().timeZone);
      if (guessed) guessed.selected = true;
    } catch (e) { /* an old browser: UTC stays */ }
  }

  // 2. Search: the list is rebuilt from a copy, so it works where hidden options do not.
  var search = document.getElementById("timezone-search");
  if (select && search) {
    var box = search.parentNode;
    var found = document.getElementById("timezone-found");
    var original = select.cloneNode(true);
    var words = function (text) {
      return text.toLowerCase().replace(/[_\/(),]/g, " ");
    };
    box.hidden = false;
    search.addEventListener("input", function () {
      var query = words(search.value).split(/\s+/).filter(Boolean);
      var current = select.value;
      var shown = 0;
      var firstValue = null;
      var keepsCurrent = false;
      while (select.firstChild) select.removeChild(select.firstChild);
      function matches(option, region) {
        var text = words(option.value + " " + option.textContent + " " +
                         (option.getAttribute("data-also") || "") + " " + region);
        return query.every(function (word) { return text.indexOf(word) !== -1; });
      }
      function keep(option) {
        shown++;
        if (firstValue === null) firstValue = option.value;
        if (option.value === current) keepsCurrent = true;
        var copy = option.cloneNode(true);
        copy.selected = false;
        return copy;
      }
      Array.prototype.forEach.call(original.children, function (node) {
        if (node.tagName !== "OPTGROUP") {
          if (matches(node, "")) select.appendChild(keep(node));
          return;
        }
        var group = node.cloneNode(false);
        Array.prototype.forEach.call(node.children, function (option) {
          if (matches(option, node.getAttribute("label") || "")) group.appendChild(keep(option));
        });
        if (group.children.length) select.appendChild(group);
      });
      if (!shown) {
        // Nothing matches: the whole list again, the choice unchanged.
        Array.prototype.forEach.call(original.children, function (node) {
          select.appendChild(node.cloneNode(true));
        });
        select.value = current;
        found.textContent = "No time zone matches \u201c" + search.value + "\u201d.";
        return;
      }
      select.value = keepsCurrent ? current : firstValue;
      found.textContent = !query.length ? "" :
        "Chosen: " + select.options[select.selectedIndex].textContent +
        (shown > 1 ? " (" + shown + " matches in the list below)" : "");
    });
  }

  // 3. Fields for some cadences only (the server ignores what does not apply).
  var radios = document.querySelectorAll("input[name=cadence]");
  var dependents = document.querySelectorAll("[data-for]");
  function showFor() {
    var chosen = document.querySelector("input[name=cadence]:checked");
    var cadence = chosen ? chosen.value : "weekly";
    Array.prototype.forEach.call(dependents, function (field) {
      field.hidden = field.getAttribute("data-for").split(" ").indexOf(cadence) === -1;
    });
  }
  if (radios.length && dependents.length) {
    document.documentElement.className += " js";
    Array.prototype.forEach.call(radios, function (radio) {
      radio.addEventListener("change", showFor);
    });
    showFor();
  }
})();
