// facelab web page: talks to the same-origin JSON API; all text is inserted with textContent (no HTML injection).
"use strict";

const $ = (id) => document.getElementById(id);

function show(id, text, isError) {
  const out = $(id);
  out.textContent = text;
  out.className = isError ? "error" : "";
}

async function call(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

// Largest side of the photo as drawn on the page, in canvas pixels.
const MAX_DRAWN = 720;

// Draw `file` on canvas `id` with a box per face: faces = [{box: [x, y, w, h] in the photo's pixels after EXIF
// orientation (as the service reports them), label, known}]. createImageBitmap applies EXIF orientation too, so the
// boxes land where the service found the faces.
async function drawFaces(id, file, faces) {
  const canvas = $(id);
  canvas.hidden = true;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (err) {
    return; // a format the browser cannot draw (e.g. HEIC): the text result above still says everything
  }
  const scale = Math.min(1, MAX_DRAWN / Math.max(bitmap.width, bitmap.height));
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const line = Math.max(2, Math.round(canvas.width / 240));
  ctx.font = `${Math.max(12, Math.round(canvas.width / 45))}px system-ui, sans-serif`;
  ctx.textBaseline = "bottom";
  canvas.dataset.faces = JSON.stringify(faces.map((f) => ({ box: f.box, label: f.label })));
  for (const face of faces) {
    const [x, y, w, h] = face.box.map((v) => v * scale);
    const colour = face.known ? "#1b9e3e" : "#d9480f";
    ctx.lineWidth = line;
    ctx.strokeStyle = colour;
    ctx.strokeRect(x, y, w, h);
    const pad = 3;
    const textWidth = ctx.measureText(face.label).width + 2 * pad;
    const textHeight = parseInt(ctx.font, 10) + 2 * pad;
    const top = y - textHeight >= 0 ? y - textHeight : y + h; // above the box, or below it at the top edge
    ctx.fillStyle = colour;
    ctx.fillRect(x - line / 2, top, textWidth, textHeight);
    ctx.fillStyle = "#fff";
    ctx.fillText(face.label, x - line / 2 + pad, top + textHeight - pad);
  }
  canvas.hidden = false;
}

async function refresh() {
  try {
    const health = await call("health");
    const t = health.thresholds.identification;
    $("health").textContent =
      `model ${health.model_fingerprint.slice(0, 12)} | 1:N threshold ` +
      `${t ? `${t.value.toFixed(3)} (${t.source})` : "not calibrated"} | ` +
      `${health.identities} identities, ${health.images} images`;
    const rows = (await call("identities")).map((identity) => {
      const tr = document.createElement("tr");
      for (const value of [identity.name, identity.images]) {
        const td = document.createElement("td");
        td.textContent = String(value);
        tr.appendChild(td);
      }
      return tr;
    });
    $("identities").replaceChildren(...rows);
  } catch (err) {
    $("health").textContent = `service unavailable (${err.message})`;
  }
}

async function identify() {
  const file = $("identify-file").files[0];
  if (!file) return show("identify-result", "choose a photo first", true);
  const form = new FormData();
  form.append("image", file);
  show("identify-result", "identifying...");
  try {
    const r = await call("identify", { method: "POST", body: form });
    const text = r.faces.map((face, i) => {
      const where = r.faces.length > 1 ? `face ${i + 1} at [${face.box.map(Math.round).join(", ")}]: ` : "";
      const lines = face.matches.map((m) => `  ${m.name}  ${m.score.toFixed(3)}`);
      const nearest = face.nearest ? ` (nearest: ${face.nearest.name} ${face.nearest.score.toFixed(3)})` : "";
      return face.known ? `${where}identity: ${face.identity}\n${lines.join("\n")}` : `${where}identity: unknown${nearest}`;
    });
    show("identify-result", text.join("\n"));
    await drawFaces("identify-canvas", file, r.faces.map((face) => {
      const best = face.known ? face.matches[0] : face.nearest;
      const score = best ? ` ${best.score.toFixed(2)}` : "";
      return { box: face.box, known: face.known, label: face.known ? `${face.identity}${score}` : `unknown${score}` };
    }));
  } catch (err) {
    $("identify-canvas").hidden = true;
    show("identify-result", err.message, true);
  }
}

async function verifyIdentity() {
  const file = $("verify-file").files[0];
  const name = $("verify-name").value.trim();
  if (!file || !name) return show("verify-result", "choose a photo and enter a name", true);
  const form = new FormData();
  form.append("image_a", file);
  form.append("identity", name);
  show("verify-result", "verifying...");
  try {
    const r = await call("verify", { method: "POST", body: form });
    show("verify-result", `${r.same_person ? "yes" : "no"}: score ${r.score.toFixed(3)}, threshold ` +
      `${r.threshold.toFixed(3)} (${r.threshold_source})`);
    const face = r.faces[0];
    if (face) {
      await drawFaces("verify-canvas", file, [{
        box: face.box, known: r.same_person, label: `${r.same_person ? name : `not ${name}`} ${r.score.toFixed(2)}`,
      }]);
    }
  } catch (err) {
    $("verify-canvas").hidden = true;
    show("verify-result", err.message, true);
  }
}

async function enroll() {
  const files = $("enroll-files").files;
  const name = $("enroll-name").value.trim();
  if (!name || files.length === 0) return show("enroll-result", "enter a name and choose photos", true);
  const form = new FormData();
  form.append("name", name);
  for (const file of files) form.append("images", file);
  show("enroll-result", "enrolling...");
  try {
    const r = await call("enroll", {
      method: "POST", body: form, headers: { Authorization: `Bearer ${$("token").value}` },
    });
    show("enroll-result", `enrolled ${r.name}: ${r.added} added, ${r.images} in total`);
    await refresh();
  } catch (err) {
    show("enroll-result", err.message, true);
  }
}

$("identify-button").addEventListener("click", identify);
$("enroll-button").addEventListener("click", enroll);
$("verify-button").addEventListener("click", verifyIdentity);
refresh();
