// vidgate console: progressive behaviour only. Pages read without it; writes (tenant
// settings, sign-out) need it, because they carry the session's CSRF token in a header.
"use strict";
(function () {
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";

  function send(method, url, body) {
    var headers = { "X-CSRF-Token": csrf };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(url, {
      method: method, headers: headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body)
    });
  }

  document.querySelectorAll("[data-js-logout]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      send("POST", "/console/logout").then(function () { window.location.assign("/console/"); });
    });
  });

  document.querySelectorAll("[data-js-tenant]").forEach(function (form) {
    var status = form.querySelector(".status");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var body = {};
      form.querySelectorAll("input[data-kind]").forEach(function (input) {
        var value = input.value.trim();
        if (input.dataset.kind === "count") {
          if (value !== "") body[input.name] = Number(value);
        } else {
          body[input.name] = value;
        }
      });
      body.period = form.querySelector("select[name=period]").value;
      body.allowed_qualities = Array.prototype.map.call(
        form.querySelectorAll("input[name=allowed_qualities]:checked"), function (box) { return box.value; });
      var id = form.getAttribute("data-js-tenant");
      status.className = "status";
      status.textContent = "Saving…";
      send("PUT", "/v1/admin/tenants/" + encodeURIComponent(id), body).then(function (response) {
        return response.json().then(function (answer) {
          if (response.ok) {
            status.textContent = "Saved. The change is in the ledger as a budget_change by you.";
          } else {
            status.className = "status error";
            status.textContent = "Not saved: " + ((answer.error && answer.error.message) || response.status);
          }
        });
      }).catch(function () {
        status.className = "status error";
        status.textContent = "Not saved: the gateway did not answer.";
      });
    });
  });
})();
