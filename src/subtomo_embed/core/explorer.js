// The embeddings explorer's page script (run by plotly's post_script once the empty figure exists).
// Data: the JSON in #explorer-data (see core/explorer.py page_data). It draws every point in one
// trace, in the page's seeded random order (D.order), so that where groups overlap each shows (no
// tomogram drawn last over the others); the legend's entries are empty traces, one per category,
// whose clicks hide and show that category's points. It shows an instance on hover, and downloads a
// box/lasso selection.
(function () {
  "use strict";
  function start() {
    const gd = document.getElementById("{plot_id}");
    const D = JSON.parse(document.getElementById("explorer-data").textContent);
    const decode = (b64, Type) => {
      const s = atob(b64);
      const bytes = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
      return new Type(bytes.buffer);
    };
    const tomogramCode = decode(D.tomogram, Int32Array);
    const coords = D.projections.map((p) => p.coords.map((c) => decode(c, Float32Array)));
    const colourings = D.colourings.map((c) =>
      c.kind === "categorical" ? Object.assign({}, c, { codes: decode(c.codes, Int32Array) })
                               : Object.assign({}, c, { values: decode(c.values, Float32Array) }));
    const order = decode(D.order, Int32Array);  // the drawing order of the points
    const view = { projection: 0, colouring: 0 };
    let hidden = new Set();  // categories of the current colouring hidden from the legend
    let legendCategory = [];  // per trace, the category whose legend entry it is (undefined: the points)
    let traceRows = [];  // per trace, the instance row of each point
    let selected = [];

    const projectionSelect = document.getElementById("projection");
    const colourSelect = document.getElementById("colour-by");
    D.projections.forEach((p, i) => projectionSelect.add(new Option(p.name, String(i))));
    colourings.forEach((c, i) => colourSelect.add(new Option(c.name, String(i))));

    function take(values, rows) {
      const out = new Float32Array(rows.length);
      for (let i = 0; i < rows.length; i++) out[i] = values[rows[i]];
      return out;
    }

    function markerSize(n, dims) {
      const s = 9 * Math.sqrt(500 / Math.max(n, 1));
      return dims === 3 ? Math.min(Math.max(s * 0.5, 1.5), 5) : Math.min(Math.max(s, 2.5), 9);
    }

    function traces() {
      const p = D.projections[view.projection];
      const xyz = coords[view.projection];
      const col = colourings[view.colouring];
      const is3d = p.dims === 3;
      const size = markerSize(D.n, p.dims);
      const out = [];
      // plotly's own label shows only the point's category and its coordinates; the side panel
      // shows the instance
      const where = "%{x:.3g}, %{y:.3g}" + (is3d ? ", %{z:.3g}" : "");
      const trace = (rows, extra) => {
        const t = Object.assign({ type: is3d ? "scatter3d" : "scattergl", mode: "markers", hovertemplate: where +
                                  "<extra>" + (col.kind === "categorical" ? "%{text}" : col.name) + "</extra>",
                                  x: take(xyz[0], rows), y: take(xyz[1], rows) }, extra);
        if (is3d) t.z = take(xyz[2], rows);
        traceRows.push(rows);
        legendCategory.push(undefined);
        out.push(t);
      };
      traceRows = [];
      legendCategory = [];
      if (col.kind === "categorical") {
        const counts = new Int32Array(col.categories.length);
        for (let i = 0; i < D.n; i++) counts[col.codes[i]]++;
        const rows = Int32Array.from(order.filter((i) => !hidden.has(col.codes[i])));
        const colours = Array.from(rows, (i) => col.colours[col.codes[i]]);
        const names = Array.from(rows, (i) => col.categories[col.codes[i]]);
        trace(rows, { name: col.name, showlegend: false, text: names,
                      marker: { color: colours, size: size, opacity: 0.8 } });
        col.categories.forEach((name, k) => {  // the legend: an entry per category, no points of its own
          if (!counts[k]) return;
          const entry = { type: is3d ? "scatter3d" : "scattergl", mode: "markers", x: [null], y: [null],
                          name: name + " (n=" + counts[k] + ")", legendgroup: name, hoverinfo: "skip",
                          visible: hidden.has(k) ? "legendonly" : true,
                          marker: { color: col.colours[k], size: size, opacity: 0.8 } };
          if (is3d) entry.z = [null];
          traceRows.push(new Int32Array(0));
          legendCategory.push(k);
          out.push(entry);
        });
      } else {
        trace(order, { name: col.name, showlegend: false,
                       marker: { color: take(col.values, order), colorscale: "Viridis", cmin: col.cmin,
                                 cmax: col.cmax, size: size, opacity: 0.8, showscale: true,
                                 colorbar: { title: { text: col.label || col.name } } } });
      }
      return out;
    }

    function layout() {
      const p = D.projections[view.projection];
      const col = colourings[view.colouring];
      const base = { template: gd.layout.template, margin: gd.layout.margin, uirevision: p.name,
                     legend: { title: { text: col.name }, itemsizing: "constant" },
                     showlegend: col.kind === "categorical", hovermode: "closest" };
      if (p.dims === 3) {
        base.scene = { xaxis: { title: { text: p.axis + " 1" } }, yaxis: { title: { text: p.axis + " 2" } },
                       zaxis: { title: { text: p.axis + " 3" } } };
        base.dragmode = "orbit";
      } else {
        base.xaxis = { title: { text: p.axis + " 1" } };
        base.yaxis = { title: { text: p.axis + " 2" } };
        base.dragmode = "lasso";
      }
      return base;
    }

    function render() {
      setSelection([]);
      return Plotly.react(gd, traces(), layout(), D.config);
    }

    // ---- the legend: a click hides or shows a category, a double click shows it alone (or all again)

    gd.on("plotly_legendclick", (ev) => {
      const k = legendCategory[ev.curveNumber];
      if (k === undefined) return false;
      if (hidden.has(k)) hidden.delete(k); else hidden.add(k);
      render();
      return false;
    });
    gd.on("plotly_legenddoubleclick", (ev) => {
      const k = legendCategory[ev.curveNumber];
      if (k === undefined) return false;
      const others = legendCategory.filter((c) => c !== undefined && c !== k);
      const alone = !hidden.has(k) && others.every((c) => hidden.has(c));
      hidden = new Set(alone ? [] : others);
      render();
      return false;
    });

    // ---- hover: the instance's details and thumbnail

    const details = document.getElementById("details");
    function row(table, cells) {
      const tr = table.insertRow();
      cells.forEach((text) => { tr.insertCell().textContent = text; });
    }
    function fmt(v, digits) { return Number(v).toFixed(digits); }
    function showInstance(i) {
      const tomogram = D.tomograms[tomogramCode[i]];
      details.replaceChildren();
      const h = document.createElement("h3");
      h.id = "details-title";
      h.textContent = tomogram + " : label " + D.label[i];
      details.appendChild(h);
      const thumb = D.thumbnails[String(i)];
      if (thumb) {
        const img = document.createElement("img");
        img.id = "details-thumbnail";
        img.alt = "central xy, xz, yz slices of the masked patch";
        img.src = "data:image/png;base64," + thumb;
        details.appendChild(img);
        const note = document.createElement("p");
        note.className = "note";
        note.textContent = "central slices of the masked patch: xy | xz | yz";
        details.appendChild(note);
      } else {
        const note = document.createElement("p");
        note.className = "note";
        note.textContent = "no thumbnail for this instance";
        details.appendChild(note);
      }
      const table = document.createElement("table");
      row(table, ["tomogram", tomogram]);
      row(table, ["label", String(D.label[i])]);
      colourings.forEach((c) => {
        if (c.cluster) row(table, [c.name, c.categories[c.codes[i]]]);
      });
      const z = D.centroid[0][i], y = D.centroid[1][i], x = D.centroid[2][i];
      row(table, ["x, y, z (voxels)", [fmt(x, 1), fmt(y, 1), fmt(z, 1)].join(", ")]);
      const vs = D.voxel_size[tomogram];
      row(table, ["x, y, z (Å)", vs ? [fmt(x * vs[2], 1), fmt(y * vs[1], 1), fmt(z * vs[0], 1)].join(", ")
                                     : "voxel size unknown"]);
      row(table, ["size (voxels)", String(D.area[i])]);
      const xyz = coords[view.projection];
      const p = D.projections[view.projection];
      row(table, [p.name, xyz.map((c) => fmt(c[i], 3)).join(", ")]);
      details.appendChild(table);
    }
    gd.on("plotly_hover", (ev) => {
      if (!ev || !ev.points || !ev.points.length) return;
      const pt = ev.points[0];
      const rows = traceRows[pt.curveNumber];
      if (rows && pt.pointNumber < rows.length) showInstance(rows[pt.pointNumber]);
    });

    // ---- selection: STAR and CSV downloads

    const count = document.getElementById("selection-count");
    const starButton = document.getElementById("download-star");
    const csvButton = document.getElementById("download-csv");
    function setSelection(rows) {
      selected = Array.from(new Set(rows)).sort((a, b) => a - b);
      count.textContent = selected.length ? selected.length + " selected" : "no selection";
      starButton.disabled = !selected.length || !D.star;
      csvButton.disabled = !selected.length;
    }
    gd.on("plotly_selected", (ev) => {
      const rows = [];
      if (ev && ev.points) ev.points.forEach((pt) => rows.push(traceRows[pt.curveNumber][pt.pointNumber]));
      setSelection(rows);
    });
    gd.on("plotly_deselect", () => setSelection([]));

    function starText(rows) {  // the rows' lines as core/star.py wrote them (page_data's "star")
      return D.star.head + rows.map((i) => D.star.rows[i]).join("\n") + (rows.length ? "\n" : "");
    }
    function csvField(v) {
      const s = String(v);
      return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
    }
    function csvText(rows) {
      const p = D.projections[view.projection];
      const clusters = colourings.filter((c) => c.cluster);
      const axes = ["x", "y", "z"].slice(0, p.dims);
      const header = ["tomogram", "label", "row", "area", "centroid-0", "centroid-1", "centroid-2"]
        .concat(clusters.map((c) => c.name), axes);
      const lines = [header.map(csvField).join(",")];
      const xyz = coords[view.projection];
      rows.forEach((i) => {
        lines.push([D.tomograms[tomogramCode[i]], D.label[i], D.row[i], D.area[i], D.centroid[0][i], D.centroid[1][i],
                    D.centroid[2][i]].concat(clusters.map((c) => c.categories[c.codes[i]]), xyz.map((c) => c[i]))
          .map(csvField).join(","));
      });
      return lines.join("\n") + "\n";
    }
    function download(name, text, type) {
      const url = URL.createObjectURL(new Blob([text], { type: type }));
      const a = document.createElement("a");
      a.href = url;
      a.download = name;
      document.body.appendChild(a);
      a.click();
      setTimeout(() => { URL.revokeObjectURL(url); a.remove(); }, 5000);
    }
    starButton.addEventListener("click", () =>
      download("selected_particles_" + selected.length + ".star", starText(selected), "text/plain"));
    csvButton.addEventListener("click", () =>
      download("selected_particles_" + selected.length + ".csv", csvText(selected), "text/csv"));

    projectionSelect.addEventListener("change", () => { view.projection = Number(projectionSelect.value); render(); });
    colourSelect.addEventListener("change", () => {
      view.colouring = Number(colourSelect.value);
      hidden = new Set();
      render();
    });
    window.explorer = { data: D, traceRows: () => traceRows, selected: () => selected.slice(), render: render };
    // the figure was sized before the side panel existed: fit it to its box now
    render().then(() => Plotly.Plots.resize(gd)).then(() => { gd.dataset.ready = "1"; });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
