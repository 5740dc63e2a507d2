// The audit console: plain JavaScript against the auditor API. Everything shown from the
// trail goes in as text (textContent), never as markup: records hold what callers sent.
"use strict";

let token = "";

function el(id) { return document.getElementById(id); }

function show(id, text, kind) {
  const node = el(id);
  node.textContent = text;
  node.className = kind || "";
}

async function call(method, path, body) {
  const headers = { "Authorization": "Bearer " + token };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  return { status: response.status, type: response.headers.get("content-type") || "", text };
}

function refusal(answer) {
  try {
    const error = JSON.parse(answer.text).error;
    return error.code + ": " + error.message;
  } catch (_) {
    return "HTTP " + answer.status;
  }
}

function subjectOf(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part)).sub || "?";
  } catch (_) {
    return "?";
  }
}

async function signIn() {
  token = el("token").value.trim();
  const answer = await call("GET", "/v1/audit/public-key");
  if (answer.status !== 200) {
    token = "";
    show("signin-result", "sign-in refused: " + refusal(answer), "failure");
    return;
  }
  const key = JSON.parse(answer.text);
  show("signin-result", "signed in; the trail is signed by key " + key.kid, "success");
  show("who", "signed in as " + subjectOf(token));
  for (const id of ["search", "verify"]) el(id).hidden = false;
}

function parseLines(text) {
  return text.split("\n").filter((line) => line.length > 0).map((line) => JSON.parse(line));
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  row.appendChild(td);
  return td;
}

async function search(event) {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(el("search-form"))) {
    if (String(value).trim() !== "") params.append(name, String(value).trim());
  }
  show("search-result", "searching...");
  const answer = await call("GET", "/v1/audit/records?" + params.toString());
  const body = el("records").tBodies[0];
  body.replaceChildren();
  if (answer.status !== 200) {
    show("search-result", "search refused: " + refusal(answer), "failure");
    return;
  }
  const records = parseLines(answer.text);
  show("search-result", records.length + " records found (the archive verified before they were read)");
  for (const record of records) {
    const row = document.createElement("tr");
    cell(row, record.seq);
    cell(row, record.time);
    cell(row, record.event);
    cell(row, record.actor);
    cell(row, record.outcome);
    cell(row, record.resource);
    const tx = cell(row, "");
    if (record.tx_id) {
      const open = document.createElement("a");
      open.href = "#";
      open.className = "open-tx";
      open.textContent = record.tx_id;
      open.addEventListener("click", (e) => { e.preventDefault(); openTransaction(record.tx_id); });
      tx.appendChild(open);
    }
    body.appendChild(row);
  }
}

async function openTransaction(tx) {
  el("transaction").hidden = false;
  el("tx-id").textContent = tx;
  const list = el("tx-records");
  list.replaceChildren();
  const records = await call("GET", "/v1/audit/records?tx=" + encodeURIComponent(tx));
  if (records.status === 200) {
    for (const record of parseLines(records.text)) {
      const item = document.createElement("li");
      item.textContent = record.time + " " + record.event + " by " + record.actor + ": " +
        record.outcome + (record.code ? " " + record.code : "") +
        (record.amount ? " (" + record.amount + ")" : "");
      list.appendChild(item);
    }
  }
  const proofs = el("tx-proofs");
  proofs.replaceChildren();
  const answer = await call("GET", "/v1/audit/transactions/" + encodeURIComponent(tx) + "/proofs");
  if (answer.status !== 200) {
    show("tx-proofs-result", "no proofs: " + refusal(answer), "failure");
    return;
  }
  const all = JSON.parse(answer.text);
  show("tx-proofs-result", all.length + " inclusion proofs, one per record");
  for (const proof of all) {
    const item = document.createElement("li");
    item.textContent = "segment " + proof.segment + ", record at index " + proof.index +
      " of its " + proof.segment_size + ", under the checkpoint over " + proof.log_size +
      " segments";
    proofs.appendChild(item);
  }
  const blob = new Blob([answer.text], { type: "application/json" });
  el("tx-proofs-download").href = URL.createObjectURL(blob);
}

async function verify() {
  show("verify-result", "verifying...");
  const answer = await call("POST", "/v1/audit/verify", {});
  if (answer.status !== 200) {
    show("verify-result", "verification refused: " + refusal(answer), "failure");
    return;
  }
  const found = JSON.parse(answer.text);
  if (found.status === "verified") {
    show("verify-result", "verified: " + found.segments + " segments, " + found.records +
      " records; log root " + found.log_root + "; newest checkpoint sealed " +
      found.newest_sealed_at, "success");
  } else {
    show("verify-result", "BROKEN: " + found.break_kind + " at " + found.break_location + ": " +
      found.break_message, "failure");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  el("signin-button").addEventListener("click", signIn);
  el("search-form").addEventListener("submit", search);
  el("verify-button").addEventListener("click", verify);
});
