// The landing page: polls this daemon's JSON API (nothing from another host) and redraws in place.
"use strict";
(() => {
  const WINDOW_S = 600;  // the chart's span; older points are dropped, so memory stays bounded
  const STEP_S = 0.5;  // one chart point per half second: mean power over the slot, from the energy counter
  const POLL_MS = 1000;
  const COLORS = ["#222", "#e4572e", "#2e86ab", "#59a14f", "#b07aa1", "#f28e2b", "#76b7b2", "#9c755f"];
  const $ = (id) => document.getElementById(id);
  const ns = "http://www.w3.org/2000/svg";

  let rows = [];  // {t, total_w, rails}, oldest first, within WINDOW_S of `now`
  let now = null;  // the daemon's monotonic clock at the last status
  let offset = null;  // the daemon's clock minus this page's, so a time since ticks between answers
  let chosen = null;  // the model picked in the select; null follows the newest profile
  let layersText = null;

  async function getJSON(path) {
    const answer = await fetch(path, {cache: "no-cache"});
    if (!answer.ok) {
      const error = new Error(path + ": HTTP " + answer.status);
      error.status = answer.status;
      throw error;
    }
    return answer.json();
  }

  // A number with an SI prefix and `digits` significant digits (3 unless said): 0.0123 J -> "12.3 mJ".
  function si(value, unit, digits) {
    if (typeof value !== "number" || !isFinite(value)) return "\u2013";
    const size = Math.abs(value);
    const power = size === 0 ? 0 : Math.max(-2, Math.min(2, Math.floor(Math.log10(size) / 3)));
    const scaled = value / Math.pow(1000, power);
    const whole = Math.abs(scaled) < 1 ? 1 : Math.floor(Math.log10(Math.abs(scaled))) + 1;
    return scaled.toFixed(Math.max(0, (digits || 3) - whole)) + " " + ["\u00b5", "m", "", "k", "M"][power + 2] + unit;
  }

  // A figure named like `energy_per_inference_j`: the unit from the suffix, the words from the rest.
  function figure(key, value) {
    const units = {j: "J", s: "s", w: "W"};
    const match = /^(.*)_([jsw])$/.exec(key);
    if (typeof value !== "number") return [key.replace(/_/g, " "), String(value)];
    if (match) return [match[1].replace(/_/g, " "), si(value, units[match[2]])];
    return [key.replace(/_/g, " "), Number.isInteger(value) ? String(value) : value.toPrecision(3)];
  }

  function element(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attributes, text) {
    const node = document.createElementNS(ns, tag);
    for (const name in attributes) node.setAttribute(name, attributes[name]);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- status and the chart ----------------------------------------------
  function showSource(source) {
    $("rate").textContent = si(1 / source.sample_period_s, "Hz");
    $("sensor").textContent = source.update_interval_s ? si(source.update_interval_s, "s") : "not reported";
  }

  function showStatus(status) {
    now = status.now;
    offset = now - performance.now() / 1000;
    if (rows.length && rows[rows.length - 1].t > now) rows = [];  // the host restarted: its clock did too
    $("power").textContent = status.up ? si(status.total_w, "W") : "sensor down";
    $("power").className = status.up ? "" : "down";
    $("state").textContent = status.up ? "" : status.last_error || "no sample yet";
    $("energy").textContent = si(status.energy_joules, "J", 5);
    $("energy-wh").textContent = si(status.energy_joules / 3600, "Wh", 4);
    $("samples").textContent = status.samples_total + " samples, " + status.errors_total + " errors";
    $("sensor-seen").textContent = status.sensor_interval_s === null ? ""
      : "seen: a new value every " + si(status.sensor_interval_s, "s");
  }

  function addRows(samples) {
    for (const sample of samples) rows.push(sample);
    const oldest = now - WINDOW_S;
    let drop = 0;
    while (drop < rows.length && rows[drop].t < oldest) drop++;
    if (drop) rows = rows.slice(drop);
  }

  function niceTop(max) {
    const scale = Math.pow(10, Math.floor(Math.log10(max)));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * scale >= max) return step * scale;
    return 10 * scale;
  }

  function draw() {
    const chart = $("chart");
    const width = chart.clientWidth || 600, height = chart.clientHeight || 240;
    const left = 46, right = 8, top = 8, bottom = 20;
    const rails = rows.length ? Object.keys(rows[rows.length - 1].rails).sort() : [];
    let max = 0;
    for (const row of rows) {
      max = Math.max(max, row.total_w);
      for (const rail of rails) max = Math.max(max, row.rails[rail] || 0);
    }
    const yTop = niceTop(max > 0 ? max * 1.05 : 1);
    const start = now - WINDOW_S;
    const x = (t) => (left + (t - start) / WINDOW_S * (width - left - right)).toFixed(1);
    const y = (w) => (height - bottom - w / yTop * (height - top - bottom)).toFixed(1);

    const parts = [];
    for (let n = 0; n <= 4; n++) {
      const w = yTop * n / 4;
      parts.push(svg("line", {class: "grid", x1: left, x2: width - right, y1: y(w), y2: y(w)}));
      parts.push(svg("text", {x: left - 4, y: +y(w) + 4, "text-anchor": "end"}, si(w, "W", 2)));
    }
    for (let minutes = 10; minutes >= 0; minutes -= 2) {
      const t = now - minutes * 60;
      parts.push(svg("text", {x: x(t), y: height - 5, "text-anchor": minutes === 10 ? "start" : minutes ? "middle"
        : "end"}, minutes ? "\u2212" + minutes + " min" : "now"));
    }
    const series = [["total", (row) => row.total_w]].concat(rails.map((rail) => [rail, (row) => row.rails[rail]]));
    const paths = series.map(([name, value], n) => {
      let d = "", previous = null;
      for (const row of rows) {
        const v = value(row);
        if (v === undefined) { previous = null; continue; }
        // a slot the sensor missed is not in the answer: the line breaks there
        d += (previous === null || row.t - previous > 1.5 * STEP_S ? "M" : "L") + x(row.t) + " " + y(v);
        previous = row.t;
      }
      const path = svg("path", {d: d, stroke: COLORS[n % COLORS.length], "data-series": name});
      if (!n) path.setAttribute("class", "total");
      return path;
    });
    parts.push(...paths.slice(1), paths[0]);  // the total on top: it equals the input rail on some boards
    chart.setAttribute("viewBox", "0 0 " + width + " " + height);
    chart.setAttribute("data-points", rows.length);
    chart.setAttribute("data-end", now);
    chart.replaceChildren(...parts);

    const legend = $("legend");
    const latest = rows[rows.length - 1];
    legend.replaceChildren(...series.map(([name, value], n) => {
      const item = element("li", "", latest ? " " + name + " " + si(value(latest), "W") : " " + name);
      const swatch = element("i");
      swatch.style.background = COLORS[n % COLORS.length];
      item.prepend(swatch);
      return item;
    }));
  }

  async function tickPower() {
    try {
      showStatus(await getJSON("/api/v1/status"));
      const since = rows.length ? rows[rows.length - 1].t : now - WINDOW_S;
      const answer = await getJSON("/api/v1/samples?since=" + since + "&step=" + STEP_S);
      addRows(answer.samples);
      draw();
    } catch (error) {
      $("state").textContent = "daemon not answering: " + error.message;
    }
    setTimeout(tickPower, POLL_MS);
  }

  // -- the profiler ------------------------------------------------------
  function elapsed(since) {
    return offset === null ? "" : ", for " + si(Math.max(0, performance.now() / 1000 + offset - since), "s");
  }

  function showActive(active) {
    const line = $("active");
    if (!active.length) {
      line.textContent = "No layer is being measured.";
      return;
    }
    line.textContent = active.map((a) => "Measuring " + a.model + ": layer " + a.index + " " + a.layer + " (" + a.op
      + ")" + elapsed(a.since)).join(" \u00b7 ");
  }

  function showProfile(models) {
    $("profile").hidden = !models.length;
    if (!models.length) return;
    const select = $("model");
    const names = models.map((m) => m.model);
    const name = names.includes(chosen) ? chosen : names[0];
    select.replaceChildren(...names.map((n) => {
      const option = element("option", "", n);
      option.value = n;
      return option;
    }));
    select.value = name;
    const model = models[names.indexOf(name)];

    // whole-model figures: the sums over the layers, and one group per power mode the profiler measured a
    // whole inference in; any figure named with a unit suffix (_j, _s, _w) shows with its unit
    const groups = [["Sum over layers", model.layer_sums]].concat(
      model.inference.map((figures) => ["Per inference", figures]));
    $("whole").replaceChildren(...groups.filter(([, figures]) => Object.keys(figures).length).map(
      ([caption, figures]) => {
        const group = element("div", "group");
        const list = element("dl", "whole");
        list.append(...Object.keys(figures).map((key) => {
          const [label, text] = figure(key, figures[key]);
          const row = element("div");
          row.append(element("dt", "", label), element("dd", "", text));
          return row;
        }));
        group.append(element("h4", "", caption), list);
        return group;
      }));

    const top = Math.max(0, ...model.layers.map((r) => r.energy_j)) || 1;
    const cells = [];
    for (const r of model.layers) {
      const name = element("span", "name", r.index + " " + r.layer + " ");
      name.append(element("small", "", r.op));
      name.title = r.layer + " (" + r.op + "): " + si(r.energy_j, "J") + " per call, " + si(r.dynamic_energy_j, "J")
        + " above idle, " + si(r.duration_s, "s") + ", " + si(r.power_w, "W");
      const track = element("span", "track"), fill = element("span", "fill"), dyn = element("span", "dyn");
      fill.style.width = (100 * r.energy_j / top).toFixed(2) + "%";
      dyn.style.width = (100 * Math.max(0, r.dynamic_energy_j) / top).toFixed(2) + "%";
      track.append(fill, dyn);
      cells.push(name, track, element("span", "val", si(r.energy_j, "J")));
    }
    $("bars").replaceChildren(...cells);
    $("key").hidden = !cells.length;
  }

  async function tickLayers() {
    try {
      const answer = await fetch("/api/v1/layers", {cache: "no-cache"});
      const text = await answer.text();
      if (answer.ok) {
        const data = JSON.parse(text);
        showActive(data.active);  // every time: the elapsed time moves
        if (text !== layersText) showProfile(data.models);
        layersText = text;
      }
    } catch (error) {
      // the power tick says when the daemon does not answer
    }
    setTimeout(tickLayers, POLL_MS);
  }

  // -- alarms and throttling (/api/v1/alarms; a daemon without them answers 404: nothing to show) --
  function showAlarms(alarms) {
    const box = $("alarms");
    box.hidden = !alarms.active.length;
    if (alarms.active.length) {
      const list = element("ul");
      for (const a of alarms.active) {
        list.append(element("li", "", a.name + " (" + a.kind + ")"  // the name says the rail or chip
          + elapsed(a.since)));
      }
      box.replaceChildren(element("span", "", "ALARM"), list);
    }
    // over-current throttling counts since boot: history, not an alarm, so shown apart
    const counts = (alarms.throttle || {}).over_current || {};
    const seen = Object.keys(counts).filter((kind) => counts[kind].events > 0);
    $("throttle").hidden = !seen.length;
    $("throttle").textContent = "Over-current throttling events since boot: "
      + seen.map((kind) => kind + " \u00d7 " + counts[kind].events).join(", ");
  }

  async function tickAlarms() {
    try {
      showAlarms(await getJSON("/api/v1/alarms"));
    } catch (error) {
      if (error.status === 404) return;  // this daemon has no alarm support
    }
    setTimeout(tickAlarms, POLL_MS);
  }

  $("model").addEventListener("change", (event) => {
    chosen = event.target.value;
    layersText = null;
  });
  window.addEventListener("resize", () => {
    if (now !== null) draw();
  });
  getJSON("/api/v1/source").then(showSource, () => {});
  tickPower();
  tickLayers();
  tickAlarms();
})();
