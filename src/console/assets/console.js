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

  function report(status, response, done) {
    return response.text().then(function (text) {
      var answer = text ? JSON.parse(text) : {};
      if (response.ok) {
        status.className = "status";
        done(answer);
      } else {
        status.className = "status error";
        status.textContent = "Not done: " + ((answer.error && answer.error.message) || response.status);
      }
    });
  }

  function failed(status) {
    return function () {
      status.className = "status error";
      status.textContent = "Not done: the gateway did not answer.";
    };
  }

  document.querySelectorAll("[data-js-webhook]").forEach(function (form) {
    var status = form.querySelector(".status");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var id = form.getAttribute("data-js-webhook");
      var url = form.querySelector("input[name=alert_webhook_url]").value.trim();
      status.textContent = "Saving…";
      send("PUT", "/v1/admin/tenants/" + encodeURIComponent(id), { alert_webhook_url: url })
        .then(function (response) {
          return report(status, response, function () {
            status.textContent = url ? "Saved: alerts also go there now." : "Removed.";
            var shown = document.querySelector("[data-alert-webhook]");
            if (shown) shown.textContent = url ? url.replace(/^(https?:\/\/[^\/]+).*$/, "$1/********") : "none";
          });
        }).catch(failed(status));
    });
  });

  document.querySelectorAll("[data-js-issue]").forEach(function (form) {
    var status = form.querySelector(".status");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var tenant = form.getAttribute("data-js-issue");
      var body = { name: form.querySelector("input[name=name]").value.trim() };
      var expires = form.querySelector("input[name=expires]").value;
      if (expires) body.expires_at = expires + "T00:00:00Z";
      status.textContent = "Issuing…";
      send("POST", "/v1/admin/tenants/" + encodeURIComponent(tenant) + "/keys", body).then(function (response) {
        return report(status, response, function (answer) {
          status.textContent = "Issued " + answer.name + " (" + answer.id + "). Reload to see it listed.";
          form.querySelector("[data-new-key]").textContent = answer.key;
          form.querySelector("[data-new-key-box]").hidden = false;
        });
      }).catch(failed(status));
    });
  });

  document.querySelectorAll("[data-js-revoke]").forEach(function (button) {
    button.addEventListener("click", function () {
      var parts = button.getAttribute("data-js-revoke").split("/");
      button.disabled = true;
      send("DELETE", "/v1/admin/tenants/" + encodeURIComponent(parts[0]) + "/keys/" + encodeURIComponent(parts[1]))
        .then(function (response) {
          if (response.status === 204) {
            var row = button.closest("tr");
            if (row) row.remove();
          } else {
            button.disabled = false;
            button.textContent = "Revoke (failed: " + response.status + ")";
          }
        });
    });
  });

  document.querySelectorAll("[data-js-rotate]").forEach(function (form) {
    var status = form.querySelector(".status");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var tenant = form.getAttribute("data-js-rotate");
      status.textContent = "Rotating…";
      send("POST", "/v1/webhooks/secret/rotate?tenant=" + encodeURIComponent(tenant)).then(function (response) {
        return report(status, response, function (answer) {
          document.querySelector("[data-webhook-secret]").textContent = answer.secret;
          status.textContent = "Rotated: configure the new key; the old one also signs until " +
            answer.previous_expires_at + ".";
        });
      }).catch(failed(status));
    });
  });
})();
