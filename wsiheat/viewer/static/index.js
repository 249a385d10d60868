/* wsiheat index: sort the triage table by a column (click its title; again to reverse). */
(function () {
  "use strict";
  var table = document.getElementById("triage");
  var body = table.tBodies[0];
  table.querySelectorAll("th[data-sort]").forEach(function (th) {
    th.addEventListener("click", function () {
      var key = th.dataset.sort, num = th.dataset.type === "number";
      var desc = !th.classList.contains("sorted-desc");
      if (th.classList.contains("sorted-asc") || th.classList.contains("sorted-desc")) {
        desc = th.classList.contains("sorted-asc");
      } else if (!num) { desc = false; }
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(desc ? "sorted-desc" : "sorted-asc");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.dataset[key], y = b.dataset[key];
        var c = num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return desc ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
})();
