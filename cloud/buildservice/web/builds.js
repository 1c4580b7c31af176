// The build service's pages (cloud/buildservice/ui.py): filled from the JSON API. Every value
// is written with textContent or as an attribute's value, never parsed as HTML.
"use strict";

const FINISHED = ["succeeded", "failed", "cancelled"];

function el(tag, text, attributes) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  return node;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "";
}

function showError(message) {
  const box = document.querySelector("p.error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, options) {
  const response = await fetch(path, { headers: { accept: "application/json" }, ...options });
  let answer = {};
  try {
    answer = await response.json();
  } catch (e) {
    answer = { error: `${response.status} ${response.statusText}` };
  }
  if (!response.ok) throw new Error(answer.error || `${response.status}`);
  return answer;
}

function stateBadge(state) {
  return el("span", state, { class: `state ${state}` });
}

function stepsText(steps) {
  return steps.map((step) => `${step.name} ${step.seconds.toFixed(1)} s`).join(", ");
}

function artifactLinks(build) {
  const list = el("ul", null, { class: "artifacts" });
  for (const artifact of build.artifacts) {
    const href = `/builds/${build.id}/artifacts/${encodeURIComponent(artifact.name)}`;
    const item = el("li");
    item.append(el("a", artifact.name, { href, download: "", title: `SHA-256 ${artifact.sha256}` }));
    item.append(` (${artifact.size} bytes)`);
    list.append(item);
  }
  return list;
}

function cancelButton(build, after) {
  const button = el("button", "Cancel", { type: "button", class: "cancel" });
  button.hidden = FINISHED.includes(build.state);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api(`/builds/${build.id}`, { method: "DELETE" });
      showError("");
    } catch (e) {
      showError(`build ${build.id}: ${e.message}`);
    }
    await after();
  });
  return button;
}

async function showList(admin) {
  const body = document.querySelector("table.builds tbody");
  const refresh = async () => {
    let builds;
    try {
      builds = (await api("/builds")).builds;
    } catch (e) {
      showError(e.message);
      return false;
    }
    const rows = builds.reverse().map((build) => {
      const row = el("tr", null, { "data-build": String(build.id) });
      const link = el("td");
      link.append(el("a", `#${build.id}`, { href: `/ui/builds/${build.id}`, class: "build-link" }));
      row.append(link, el("td", build.recipe, { class: "recipe" }));
      if (admin) row.append(el("td", `user ${build.owner_id}`));
      const state = el("td");
      state.append(stateBadge(build.state));
      const artifacts = el("td");
      artifacts.append(artifactLinks(build));
      const actions = el("td");
      actions.append(cancelButton(build, refresh));
      row.append(state, el("td", when(build.created)), el("td", stepsText(build.steps)), artifacts, actions);
      return row;
    });
    body.replaceChildren(...rows);
    document.querySelector("p.empty").hidden = rows.length > 0;
    return builds.some((build) => !FINISHED.includes(build.state));
  };
  while (await refresh()) await new Promise((done) => setTimeout(done, 2000));
}

function showBuild(build) {
  document.getElementById("state").replaceChildren(stateBadge(build.state));
  document.getElementById("recipe").textContent = build.recipe;
  document.getElementById("created").textContent = when(build.created);
  document.getElementById("failure").textContent = build.error || "—";
  document.getElementById("steps").replaceChildren(
    ...build.steps.map((step) => {
      const row = el("tr");
      row.append(el("td", step.name), el("td", `${step.seconds.toFixed(1)} s`));
      return row;
    }),
  );
  document.getElementById("artifacts").replaceChildren(...artifactLinks(build).children);
  const cancel = document.getElementById("cancel");
  cancel.hidden = FINISHED.includes(build.state);
}

async function followLog(id, pre) {
  // The service sends the log as it grows and ends the response when the build has finished.
  const response = await fetch(`/builds/${id}/log`);
  if (!response.ok) throw new Error(`log: ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(value);
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }
}

async function showBuildPage(id) {
  let finished = false;
  const refresh = async () => {
    try {
      const build = await api(`/builds/${id}`);
      showBuild(build);
      finished = FINISHED.includes(build.state);
    } catch (e) {
      showError(e.message);
      finished = true;
    }
  };
  document.getElementById("cancel").addEventListener("click", async () => {
    try {
      await api(`/builds/${id}`, { method: "DELETE" });
    } catch (e) {
      showError(e.message);
    }
    await refresh();
  });
  await refresh();
  const log = followLog(id, document.getElementById("log")).catch((e) => showError(e.message));
  while (!finished) {
    await new Promise((done) => setTimeout(done, 1000));
    await refresh();
  }
  await log;
  await refresh(); // the final state, once the whole log is shown
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "list") showList(document.body.dataset.admin === "1");
  if (page === "build") showBuildPage(Number(document.body.dataset.build));
});
