// paystream status page: follows paymentStatus or accountActivity over graphql-transport-ws;
// an account's page opens on its last 20 changes (the events feed) and resumes after them.
// No framework and no build step. Everything the server sends is shown with textContent,
// never parsed as HTML.
"use strict";

(function () {
  const PAYMENT_FIELDS = "id status amount currency failureReason updatedAt " +
    "capturedAmount amountRefunded authorizationExpiresAt " +
    "sourceAccount { id name balance availableBalance } " +
    "destinationAccount { id name balance availableBalance }";
  const QUERIES = {
    payment: "subscription($id: ID!) { paymentStatus(id: $id) { " + PAYMENT_FIELDS + " } }",
    // Resumed after the last change shown: the history first, then live, with no gap.
    account: "subscription($id: ID!, $after: String) { accountActivity(accountId: $id, " +
      "after: $after) { eventCursor " + PAYMENT_FIELDS + " } }",
  };
  // The account's last 20 changes, from the events feed, shown before going live.
  const HISTORY = "query($id: ID!) { account(id: $id) { recentEvents(last: 20) { cursor " +
    "payment { " + PAYMENT_FIELDS + " } } } }";
  // Close codes after which reconnecting cannot help (graphql-transport-ws 44xx: bad key,
  // bad message, init timeout...).
  const FINAL_CLOSE = (code) => code >= 4400 && code < 4500;
  // Errors after which subscribing again can succeed: the server ended the subscription
  // ("subscription ended ...; subscribe again") or could not reach a backing server.
  const RETRYABLE = new Set(["UNAVAILABLE", "INTERNAL"]);

  const $ = (id) => document.getElementById(id);

  function target() {
    const parts = location.pathname.replace(/\/+$/, "").split("/");
    // /status/<payment id> or /status/account/<account id>
    if (parts.length === 4 && parts[2] === "account") return { kind: "account", id: parts[3] };
    return { kind: "payment", id: parts[parts.length - 1] };
  }

  function keyFromFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const key = params.get("key");
    if (key) {
      // Out of the address bar and the history: the key should not linger where it shows.
      history.replaceState(null, "", location.pathname + location.search);
    }
    return key;
  }

  function setConnection(state, text) {
    const el = $("connection");
    el.dataset.state = state;
    el.textContent = text;
  }

  function showError(message) {
    const el = $("error");
    el.textContent = message;
    el.hidden = !message;
  }

  function describeAccount(account, currency) {
    if (!account) return "";
    let text = account.name + " (" + account.id + ")";
    text += account.balance === null || account.balance === undefined
      ? " · balance not visible"
      : " · balance " + account.balance + " " + currency;
    // Only when a hold keeps part of it: most accounts have nothing held.
    if (account.availableBalance !== null && account.availableBalance !== undefined &&
        account.availableBalance !== account.balance) {
      text += " · available " + account.availableBalance + " " + currency;
    }
    return text;
  }

  // Times in the viewer's locale and time zone; the exact ISO value stays in the tooltip.
  function showTime(el, iso) {
    if (!iso) {
      el.textContent = "—";
      el.removeAttribute("title");
      return;
    }
    const when = new Date(iso);
    el.textContent = isNaN(when.getTime()) ? iso
      : when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
    el.title = iso;
  }

  function setStatus(el, status) {
    el.textContent = status;
    el.dataset.status = status;
  }

  function renderPayment(p) {
    setStatus($("status"), p.status);
    $("amount").textContent = p.amount;
    $("currency").textContent = p.currency;
    $("source").textContent = describeAccount(p.sourceAccount, p.currency);
    $("destination").textContent = describeAccount(p.destinationAccount, p.currency);
    $("failure-reason").textContent = p.failureReason || "—";
    $("captured").textContent = p.capturedAmount ? p.capturedAmount + " " + p.currency : "—";
    // Amounts stay strings: a zero test on the text, no floating point.
    const refunded = p.amountRefunded && !/^0(\.0+)?$/.test(p.amountRefunded);
    $("refunded").textContent = refunded ? p.amountRefunded + " " + p.currency : "—";
    showTime($("expires-at"), p.authorizationExpiresAt);
    showTime($("updated-at"), p.updatedAt);
  }

  function renderActivity(p) {
    const body = $("activity");
    let row = null;
    for (const existing of body.rows) {
      if (existing.dataset.paymentId === p.id) row = existing;
    }
    if (row === null) {
      row = document.createElement("tr");
      row.dataset.paymentId = p.id;
      for (const name of ["id", "status", "amount", "source", "destination", "reason", "updated"]) {
        const cell = document.createElement("td");
        cell.className = "c-" + name;
        if (name === "status") {
          const badge = document.createElement("span");
          badge.className = "status";
          cell.appendChild(badge);
        }
        row.appendChild(cell);
      }
    }
    body.insertBefore(row, body.firstChild); // the latest change on top
    row.querySelector(".c-id").textContent = p.id;
    setStatus(row.querySelector(".c-status .status"), p.status);
    row.querySelector(".c-amount").textContent = p.amount + " " + p.currency;
    row.querySelector(".c-source").textContent = describeAccount(p.sourceAccount, p.currency);
    row.querySelector(".c-destination").textContent = describeAccount(p.destinationAccount, p.currency);
    row.querySelector(".c-reason").textContent = p.failureReason || "";
    showTime(row.querySelector(".c-updated"), p.updatedAt);
  }

  function codesOf(errors) {
    return (Array.isArray(errors) ? errors : [errors])
      .map((e) => e && e.extensions && e.extensions.code);
  }

  function errorText(errors) {
    const list = Array.isArray(errors) ? errors : [errors];
    return list.map((e) => {
      const code = e && e.extensions && e.extensions.code;
      return (code ? code + ": " : "") + ((e && e.message) || "error");
    }).join("; ");
  }

  // One watcher: a socket, reconnected with back-off until the subscription completes, fails
  // for good, or the key changes. A reconnected paymentStatus sends the current state first,
  // so a terminal status reached while away is not missed.
  // The account's recent history over HTTP (same origin, the key in the Authorization
  // header, never in the URL); resolves to the last change's cursor, or null.
  async function loadHistory(key, what) {
    const response = await fetch("/graphql", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + key },
      body: JSON.stringify({ query: HISTORY, variables: { id: what.id } }),
    });
    const body = await response.json();
    if (body.errors && body.errors.length) throw new Error(errorText(body.errors));
    const account = body.data && body.data.account;
    if (!account) throw new Error("NOT_FOUND: no such account");
    let cursor = null;
    for (const event of account.recentEvents) { // oldest first: the newest ends on top
      if (event.payment) renderActivity(event.payment);
      cursor = event.cursor;
    }
    return cursor;
  }

  function watch(key, what) {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/graphql";
    const field = what.kind === "payment" ? "paymentStatus" : "accountActivity";
    let socket = null;
    let stopped = false;
    let attempt = 0;
    let timer = null;
    // accountActivity resumes after the last change shown (history or live), also after a
    // reconnect, so nothing in between is missed.
    let after = null;

    function connect() {
      setConnection("connecting", "connecting…");
      socket = new WebSocket(url, "graphql-transport-ws");
      let done = false;
      let retryable = false;
      let failed = false;
      socket.onopen = () => {
        socket.send(JSON.stringify({
          type: "connection_init", payload: { authorization: "Bearer " + key },
        }));
      };
      socket.onmessage = (event) => {
        let message;
        try { message = JSON.parse(event.data); } catch (_) { return; }
        switch (message.type) {
          case "connection_ack":
            attempt = 0;
            setConnection("live", "live");
            const variables = what.kind === "account" ? { id: what.id, after: after }
              : { id: what.id };
            socket.send(JSON.stringify({
              id: "1", type: "subscribe", payload: { query: QUERIES[what.kind], variables },
            }));
            break;
          case "ping":
            socket.send(JSON.stringify({ type: "pong" }));
            break;
          case "next": {
            const payload = message.payload || {};
            if (payload.errors && payload.errors.length) {
              showError(errorText(payload.errors));
              retryable = codesOf(payload.errors).some((code) => RETRYABLE.has(code));
              failed = true;
            }
            if (payload.data && payload.data[field]) {
              showError("");
              const update = payload.data[field];
              if (update.eventCursor) after = update.eventCursor;
              (what.kind === "payment" ? renderPayment : renderActivity)(update);
            }
            break;
          }
          case "error":
            done = true;
            showError(errorText(message.payload));
            setConnection("failed", "refused");
            socket.close(1000);
            break;
          case "complete":
            // Ended by an error worth retrying: close and let onclose reconnect; the current
            // state comes first again.
            done = !retryable;
            if (done && failed) {
              setConnection("failed", "ended with an error");
            } else if (done) {
              setConnection("done", what.kind === "payment"
                ? "complete: final status reached" : "subscription ended");
            }
            socket.close(1000);
            break;
        }
      };
      socket.onclose = (event) => {
        if (stopped || done) {
          if (!done) setConnection("closed", "stopped");
          return;
        }
        if (FINAL_CLOSE(event.code)) {
          setConnection("failed", "refused (" + event.code + ")");
          showError(event.reason || "the server refused the connection");
          return;
        }
        const delay = Math.min(15000, 500 * 2 ** attempt++);
        setConnection("closed", "disconnected; reconnecting in " + Math.round(delay / 1000) + " s");
        timer = setTimeout(connect, delay);
      };
    }

    if (what.kind === "account") {
      setConnection("connecting", "loading history…");
      loadHistory(key, what).then((cursor) => {
        after = cursor;
      }, (error) => {
        // Live without the history rather than nothing; the subscription reports a bad key.
        showError("history unavailable: " + error.message);
      }).finally(() => {
        if (!stopped) connect();
      });
    } else {
      connect();
    }
    return function stop() {
      stopped = true;
      clearTimeout(timer);
      if (socket !== null) socket.close(1000);
    };
  }

  function start() {
    const what = target();
    const view = what.kind === "payment" ? $("payment-view") : $("account-view");
    $(what.kind === "payment" ? "payment-id" : "account-id").textContent = what.id;
    $("title").textContent = what.kind === "payment" ? "Payment status" : "Account activity";
    let stop = null;

    function begin(key) {
      if (stop !== null) stop();
      showError("");
      view.hidden = false;
      stop = watch(key, what);
    }

    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key").value.trim();
      if (key) begin(key);
    });
    const key = keyFromFragment();
    if (key) {
      $("key").value = key;
      begin(key);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
