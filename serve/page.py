"""The page ``GET /`` shows: drop photos (or choose them), see each one's top 3 and "none of these" where the
model's reject option says so. One self-contained document (no external script, style or font: it works on a
closed network); it talks to the server by relative URLs, so it works under any route prefix (Ray Serve)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>clothprobe</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 56rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  #model { color: #666; font-size: .9rem; margin-bottom: 1rem; }
  #drop { border: 2px dashed #999; border-radius: 8px; padding: 2rem; text-align: center; cursor: pointer; }
  #drop.over { border-color: #2a6; background: #efe; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); gap: 1rem;
             margin-top: 1.5rem; padding: 0; list-style: none; }
  .photo { border: 1px solid #ddd; border-radius: 8px; padding: .6rem; }
  .photo img { width: 100%; height: 12rem; object-fit: contain; background: #f6f6f6; }
  .name { font-size: .8rem; color: #666; overflow-wrap: anywhere; }
  .answer { font-weight: 600; margin: .3rem 0; }
  .unknown { color: #b50; }
  .error { color: #b00; font-size: .9rem; }
  .top { list-style: none; padding: 0; margin: 0; }
  .top li { display: flex; justify-content: space-between; font-size: .9rem; position: relative; padding: 1px 4px; }
  .top li .bar { position: absolute; left: 0; top: 0; bottom: 0; background: #cde8d6; z-index: -1; }
</style>
</head>
<body>
<h1>clothprobe</h1>
<div id="model">loading the model's description...</div>
<label id="drop" for="files">Drop photos here, or click to choose them
  <input id="files" type="file" accept="image/*" multiple hidden>
</label>
<ul id="results"></ul>
<script>
"use strict";
const results = document.getElementById("results");
const drop = document.getElementById("drop");
const input = document.getElementById("files");
const TOP = 3, AT_ONCE = 4;

fetch("metadata").then(r => r.json()).then(m => {
  const acc = m.test_accuracy === null ? "" : `, test accuracy ${(100 * m.test_accuracy).toFixed(1)}%`;
  const reject = m.openset ? ", answers \\"none of these\\" for other garments" : "";
  document.getElementById("model").textContent =
    `${m.run}: ${m.classes.length} classes (${m.classes.join(", ")})${acc}, ${m.precision}${reject}`;
}).catch(() => { document.getElementById("model").textContent = "the model's description could not be read"; });

function card(file) {
  const li = document.createElement("li");
  li.className = "photo";
  const img = document.createElement("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = file.name;
  const answer = document.createElement("div");
  answer.className = "answer";
  answer.textContent = "...";
  const top = document.createElement("ol");
  top.className = "top";
  li.append(img, name, answer, top);
  results.prepend(li);
  return li;
}

function show(li, p) {
  const answer = li.querySelector(".answer"), top = li.querySelector(".top");
  answer.textContent = p.unknown ? "none of these" : p.answer;
  li.dataset.unknown = String(p.unknown);
  if (p.unknown) answer.classList.add("unknown");
  for (const t of p.top) {
    const row = document.createElement("li");
    const label = document.createElement("span");
    label.className = "class";
    label.textContent = t.class;
    const value = document.createElement("span");
    value.className = "probability";
    value.textContent = `${(100 * t.probability).toFixed(1)}%`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${100 * t.probability}%`;
    row.append(bar, label, value);
    top.append(row);
  }
}

function fail(li, reason) {
  const answer = li.querySelector(".answer");
  answer.textContent = reason;
  answer.className = "error";
}

async function classify(file, li) {
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const r = await fetch(`predict?k=${TOP}`, { method: "POST", body: form });
    const body = await r.json();
    if (!r.ok) return fail(li, body.error || `error ${r.status}`);
    const p = body.predictions[0];
    if (p.error) return fail(li, p.error);
    show(li, p);
  } catch (e) {
    fail(li, `the server could not be reached (${e})`);
  } finally {
    li.dataset.done = "true";
  }
}

async function classifyAll(files) {
  const queue = [...files].map(f => [f, card(f)]);
  const worker = async () => { while (queue.length) { const [f, li] = queue.shift(); await classify(f, li); } };
  await Promise.all(Array.from({ length: AT_ONCE }, worker));
}

input.addEventListener("change", () => { classifyAll(input.files); input.value = ""; });
for (const kind of ["dragenter", "dragover"])
  drop.addEventListener(kind, e => { e.preventDefault(); drop.classList.add("over"); });
for (const kind of ["dragleave", "drop"])
  drop.addEventListener(kind, e => { e.preventDefault(); drop.classList.remove("over"); });
drop.addEventListener("drop", e => classifyAll(e.dataTransfer.files));
</script>
</body>
</html>
"""
