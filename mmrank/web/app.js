// The mmrank search page: talks to the JSON API of `mmrank serve`. Everything shown comes in as
// text (textContent), never as HTML, so a page text or a query holding markup shows as text.
"use strict";

const $ = (id) => document.getElementById(id);
let served = [];
let picture = null;
const objectUrls = [];

function token() { return sessionStorage.getItem("mmrank-token") || ""; }
function headers() { return token() ? { Authorization: `Bearer ${token()}` } : {}; }

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

// Fills the collection and pipeline choices; says "Ready" unless `announce` is false (after a
// search with a token just entered, whose results the status line is showing).
async function loadCollections(announce = true) {
  const response = await fetch("/collections", { headers: headers() });
  if (response.status === 401) {
    $("token-box").hidden = false;
    status("This server needs a token: enter it above, then search.", true);
    return;
  }
  const answer = await readJson(response);
  if (!response.ok || !Array.isArray(answer)) { status(problem(response, answer), true); return; }
  served = answer;
  const select = $("collection");
  select.replaceChildren(...served.map((c) => {
    const option = element("option", null, `${c.name} (${c.items} items)`);
    option.value = c.name;
    return option;
  }));
  fillPipelines();
  if (announce) status(`Ready: ${served.map((c) => c.name).join(", ")}.`);
}

// The JSON body of a response, or null when it has none (a proxy's HTML error page, say).
async function readJson(response) {
  try { return await response.json(); } catch { return null; }
}

// What went wrong, from an error answer: FastAPI's {"detail": "..."} or its list of field errors.
function problem(response, answer) {
  const detail = answer && answer.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => (d && d.msg) || JSON.stringify(d)).join("; ");
  return `Error ${response.status} ${response.statusText}`.trim();
}

function fillPipelines() {
  const chosen = served.find((c) => c.name === $("collection").value);
  if (!chosen) return;
  $("pipeline").replaceChildren(...chosen.pipelines.map((name) => {
    const option = element("option", null, name);
    option.value = name;
    return option;
  }));
  $("pipeline").value = chosen.default_pipeline;
}

function setPicture(file) {
  picture = file;
  $("preview").hidden = !file;
  $("clear-image").hidden = !file;
  $("drop-text").textContent = file ? `Reference: ${file.name}` :
    "Drop a reference picture here, or click to choose one (optional: with a text, a composed search)";
  if (file) $("preview").src = URL.createObjectURL(file);
}

async function thumbnail(img, url) {
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) { img.replaceWith(element("div", "nothumb", "no picture")); return; }
  const objectUrl = URL.createObjectURL(await response.blob());
  objectUrls.push(objectUrl);
  img.src = objectUrl;
}

function card(hit, stages) {
  const node = element("article", "card");
  node.dataset.id = hit.id;
  if (hit.thumbnail) {
    const img = element("img", "thumb");
    img.alt = `${hit.source || hit.id}${hit.page ? ` page ${hit.page}` : ""}`;
    node.append(img);
    thumbnail(img, hit.thumbnail);
  } else {
    node.append(element("div", "nothumb", hit.kind === "text" ? "text" : "no picture"));
  }
  const title = element("div");
  title.append(element("span", "rank", `#${hit.rank}`), document.createTextNode(` score ${hit.score.toFixed(4)}`));
  node.append(title);
  const name = hit.source ? hit.source.split(/[\\/]/).pop() : hit.id;
  node.append(element("div", "source", hit.page ? `${name}, page ${hit.page}` : name));
  if (hit.snippet) node.append(element("div", "snippet", hit.snippet));
  const table = element("table");
  const head = element("tr");
  head.append(element("th", null, "stage"), element("th", null, "rank"), element("th", null, "score"));
  table.append(head);
  for (const stage of stages) {
    const record = hit.stages[stage];
    const row = element("tr");
    row.append(element("td", null, stage), element("td", null, record ? record.rank : "-"),
      element("td", null, record && record.score !== null ? Number(record.score).toFixed(4) : "-"));
    table.append(row);
  }
  node.append(table);
  for (const [stage, record] of Object.entries(hit.stages)) {
    if (record.note) node.append(element("div", "note", `${stage}: ${record.note}`));
  }
  if (hit.found_by && hit.found_by.length) node.append(element("div", "muted", `found by ${hit.found_by.join(", ")}`));
  return node;
}

function showAnswer(answer) {
  objectUrls.splice(0).forEach((url) => URL.revokeObjectURL(url));
  const said = $("said");
  said.replaceChildren();
  for (const [stage, texts] of Object.entries(answer.explanations)) {
    texts.filter((text) => text.trim()).forEach((text) => said.append(element("div", "said", `${stage}: ${text}`)));
  }
  for (const [stage, pictures] of Object.entries(answer.pictures)) {
    pictures.forEach((url) => {
      if (!url.startsWith("data:image/")) return;
      const img = element("img");
      img.alt = `what ${stage} showed the model`;
      img.src = url;
      said.append(element("div", "said", `${stage} showed the model:`), img);
    });
  }
  $("results").replaceChildren(...answer.hits.map((hit) => card(hit, answer.stages)));
  const total = Object.values(answer.timings_ms).reduce((a, b) => a + b, 0);
  const count = answer.hits.length === 1 ? "1 result" : `${answer.hits.length} results`;
  status(`${count} from ${answer.collection} (${answer.pipeline}), ${total.toFixed(0)} ms.`);
}

async function search(event) {
  event.preventDefault();
  if (!$("token-box").hidden) {  // the box is shown once the server asked for a token
    if ($("token").value) sessionStorage.setItem("mmrank-token", $("token").value);
    else sessionStorage.removeItem("mmrank-token");
  }
  const text = $("text").value.trim();
  if (!text && !picture) { status("Type a text, add a picture, or both.", true); return; }
  const form = new FormData();
  if (text) form.append("text", text);
  if (picture) form.append("image", picture);
  form.append("k", $("k").value || "10");
  if ($("collection").value) form.append("collection", $("collection").value);
  if ($("pipeline").value) form.append("pipeline", $("pipeline").value);
  status("Searching...");
  $("go").disabled = true;
  try {
    const response = await fetch("/search", { method: "POST", body: form, headers: headers() });
    const answer = await readJson(response);
    if (!response.ok || !answer) {
      if (response.status === 401) $("token-box").hidden = false;
      status(problem(response, answer), true);
      return;
    }
    showAnswer(answer);
    if (!served.length) {  // the token has just been entered: now the choices can be shown
      await loadCollections(false);
      if (served.some((c) => c.name === answer.collection)) {
        $("collection").value = answer.collection;
        fillPipelines();
        $("pipeline").value = answer.pipeline;
      }
    }
  } catch (error) {
    status(`The server did not answer: ${error}`, true);
  } finally {
    $("go").disabled = false;
  }
}

$("search").addEventListener("submit", search);
$("collection").addEventListener("change", fillPipelines);
$("drop").addEventListener("click", (event) => { if (event.target.id !== "clear-image") $("image").click(); });
$("drop").addEventListener("keydown", (event) => {  // not on keys meant for the Remove button inside it
  if (event.target === $("drop") && (event.key === "Enter" || event.key === " ")) {
    event.preventDefault();
    $("image").click();
  }
});
$("image").addEventListener("change", () => setPicture($("image").files[0] || null));
$("clear-image").addEventListener("click", () => { $("image").value = ""; setPicture(null); });
$("drop").addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/"));
  if (file) setPicture(file);
});
loadCollections().catch((error) => status(`The server did not answer: ${error}`, true));
