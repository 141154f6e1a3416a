// report.html: tables with class "sortable" sort on a click of a column header (again:
// the other way). Cells sort by their data-sort value: numbers as numbers, other text
// as text; an empty value (undefined metric) stays last in both directions.
(function () {
  "use strict";

  function value(cell) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) raw = cell.textContent.trim();
    if (raw === "") return null;
    var n = Number(raw);
    return isNaN(n) ? raw : n;
  }

  function compare(a, b, ascending) {
    if (a === null || b === null) return (a === null) - (b === null);
    var order;
    if (typeof a === "number" && typeof b === "number") order = a - b;
    else order = String(a).localeCompare(String(b), undefined, { numeric: true });
    return ascending ? order : -order;
  }

  function sortBy(table, header, column) {
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("thead th").forEach(function (th) {
      th.removeAttribute("aria-sort");
    });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r, s) {
      return compare(value(r.cells[column]), value(s.cells[column]), ascending);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (header, column) {
      header.title = "click to sort";
      header.addEventListener("click", function () { sortBy(table, header, column); });
    });
  });
})();
