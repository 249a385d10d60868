/* wsiheat slide page: OpenSeadragon deep zoom of the slide, the heatmap as an aligned
   second layer, lesion candidates, ground-truth outlines, scale bar, keyboard; for a slide
   the heatmap stain-normalised, the normalised slide as a layer between the two.
   Data come from the page's JSON (#slide-data); only tiles are loaded. */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("slide-data").textContent);
  var W = D.width;
  var state = {cmap: D.colormaps[0], threshold: 0, opacity: 0.5, current: -1, heatmap: null, failedTiles: 0};

  function source(layer, query) {
    return {
      width: layer.width, height: layer.height, tileSize: layer.tileSize, tileOverlap: layer.overlap,
      minLevel: 0, maxLevel: layer.maxLevel,
      getTileUrl: function (level, x, y) {
        return layer.url + level + "/" + x + "_" + y + "." + layer.format + (query || "");
      }
    };
  }

  function heatmapQuery() {
    return D.live ? "?cmap=" + encodeURIComponent(state.cmap) + "&thr=" + state.threshold.toFixed(2) : "";
  }

  var viewer = OpenSeadragon({
    id: "osd",
    prefixUrl: "../static/openseadragon/images/",
    drawer: "canvas",
    imageSmoothingEnabled: false,
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    maxZoomPixelRatio: 2,
    visibilityRatio: 0.5,
    crossOriginPolicy: false,
    tileSources: [{tileSource: source(D.slide), x: 0, y: 0, width: D.slide.vpWidth}]
  });
  window.wsiheatViewer = viewer;
  viewer.addHandler("tile-load-failed", function () { state.failedTiles += 1; });
  window.wsiheatState = state;

  function addHeatmap() {
    var r = D.heatmap.rect;
    var old = state.heatmap;
    // replace the heatmap where it is (on top: above the stain layer when there is one)
    var at = old ? viewer.world.getIndexOfItem(old) : -1;
    viewer.addTiledImage({
      tileSource: source(D.heatmap, heatmapQuery()), x: r.x, y: r.y, width: r.width,
      opacity: document.getElementById("show-heatmap").checked ? state.opacity : 0,
      index: at >= 0 ? at : 1, replace: at >= 0,
      success: function (ev) { state.heatmap = ev.item; state.heatmapReady = false;
        ev.item.addOnceHandler("fully-loaded-change", function () { state.heatmapReady = true; }); }
    });
  }
  viewer.addOnceHandler("open", addHeatmap);

  // -- the slide as the model saw it: stain-normalised tiles, same geometry as the slide layer,
  // added on first use just above the raw slide (below the heatmap); the raw slide stays under it,
  // so switching back is immediate and switching on shows the raw slide until the tiles arrive
  var stainBox = document.getElementById("stain-normalised");
  function showStain(on) {
    state.stainOn = on;
    if (state.stain) { state.stain.setOpacity(on ? 1 : 0); return; }
    if (!on || state.stainAdding) return;
    state.stainAdding = true;
    var layer = {};
    Object.keys(D.slide).forEach(function (k) { layer[k] = D.slide[k]; });
    layer.url = D.stain.url; layer.format = D.stain.format;
    viewer.addTiledImage({
      tileSource: source(layer), x: 0, y: 0, width: D.slide.vpWidth,
      index: viewer.world.getIndexOfItem(state.slide) + 1,
      success: function (ev) {
        state.stain = ev.item; state.stainAdding = false;
        ev.item.setOpacity(state.stainOn ? 1 : 0);
      },
      error: function () { state.stainAdding = false; }
    });
  }
  if (stainBox && D.stain) {
    viewer.addOnceHandler("open", function () {
      state.slide = viewer.world.getItemAt(0);
      stainBox.disabled = false;
      if (stainBox.checked) showStain(true);
    });
    stainBox.addEventListener("change", function () { showStain(stainBox.checked); });
  }

  // -- controls ---------------------------------------------------------------------
  var cmapSel = document.getElementById("colormap");
  D.colormaps.forEach(function (c) {
    var o = document.createElement("option"); o.value = c; o.textContent = c; cmapSel.appendChild(o);
  });
  cmapSel.addEventListener("change", function () { state.cmap = cmapSel.value; addHeatmap(); });
  var opacity = document.getElementById("opacity");
  function applyOpacity() {
    state.opacity = parseFloat(opacity.value);
    document.getElementById("opacity-value").textContent = state.opacity.toFixed(2);
    if (state.heatmap) state.heatmap.setOpacity(document.getElementById("show-heatmap").checked ? state.opacity : 0);
  }
  opacity.addEventListener("input", applyOpacity);
  document.getElementById("show-heatmap").addEventListener("change", applyOpacity);
  var thr = document.getElementById("threshold");
  thr.addEventListener("input", function () {
    document.getElementById("threshold-value").textContent = parseFloat(thr.value).toFixed(2);
  });
  thr.addEventListener("change", function () { state.threshold = parseFloat(thr.value); addHeatmap(); });

  // -- ground-truth outlines: one SVG over the whole slide, scaled by OpenSeadragon ----
  var SVGNS = "http://www.w3.org/2000/svg";
  var gtBox = document.getElementById("show-gt");
  var gtSvg = null;
  if (!D.outlines.length) {
    gtBox.disabled = true;
    document.getElementById("gt-note").textContent = D.gtProblem || "no ground truth given for this slide";
  }
  function showOutlines(on) {
    if (on && !gtSvg) {
      gtSvg = document.createElementNS(SVGNS, "svg");
      gtSvg.setAttribute("id", "gt-overlay");
      gtSvg.setAttribute("viewBox", "0 0 " + W + " " + D.height);
      gtSvg.setAttribute("preserveAspectRatio", "none");
      D.outlines.forEach(function (o) {
        var p = document.createElementNS(SVGNS, "polygon");
        p.setAttribute("points", o.points.map(function (q) { return q[0] + "," + q[1]; }).join(" "));
        p.setAttribute("class", o.hole ? "gt-hole" : "gt-tumor");
        gtSvg.appendChild(p);
      });
      viewer.addOverlay({element: gtSvg, location: new OpenSeadragon.Rect(0, 0, 1, D.height / W)});
    } else if (!on && gtSvg) {
      viewer.removeOverlay(gtSvg); gtSvg = null;
    }
    gtBox.checked = on;
  }
  gtBox.addEventListener("change", function () { showOutlines(gtBox.checked); });

  // -- lesion candidates ------------------------------------------------------------
  var list = document.getElementById("candidate-list");
  document.getElementById("n-candidates").textContent = "(" + D.lesions.length + ")";
  var markers = [];
  D.lesions.forEach(function (c, i) {
    var m = document.createElement("button");
    m.className = "marker"; m.id = "marker-" + (i + 1); m.textContent = String(i + 1);
    m.title = "#" + (i + 1) + "  p = " + c[0].toFixed(3);
    viewer.addOverlay({element: m, location: new OpenSeadragon.Point(c[1] / W, c[2] / W),
                       placement: OpenSeadragon.Placement.CENTER, checkResize: false});
    markers.push(m);
    var li = document.createElement("li");
    var a = document.createElement("a");
    a.href = "#"; a.className = "candidate"; a.id = "candidate-" + (i + 1);
    a.textContent = "p = " + c[0].toFixed(3) + "  (" + Math.round(c[1]) + ", " + Math.round(c[2]) + ")";
    a.addEventListener("click", function (ev) { ev.preventDefault(); goTo(i); });
    li.appendChild(a); list.appendChild(li);
  });
  if (!D.lesions.length) {
    var li = document.createElement("li"); li.className = "none"; li.textContent = "none";
    list.appendChild(li);
  }
  // a MouseTracker per marker: its click goes to the candidate and does not zoom the viewer
  markers.forEach(function (m, i) {
    new OpenSeadragon.MouseTracker({element: m, clickHandler: function () { goTo(i); }});
  });

  function goTo(i) {
    if (!D.lesions.length) return;
    i = (i + D.lesions.length) % D.lesions.length;
    state.current = i;
    var c = D.lesions[i];
    // show about 12 heatmap cells around the candidate
    var side = 12 * D.heatmap.cellSize / W;
    viewer.viewport.fitBounds(new OpenSeadragon.Rect(c[1] / W - side / 2, c[2] / W - side / 2, side, side));
    document.querySelectorAll(".candidate.current, .marker.current").forEach(function (el) {
      el.classList.remove("current");
    });
    document.getElementById("candidate-" + (i + 1)).classList.add("current");
    markers[i].classList.add("current");
  }
  window.wsiheatGoTo = goTo;

  // -- scale bar (µm), when the slide has µm/px ----------------------------------------
  var bar = document.getElementById("scalebar");
  function updateScale() {
    if (!D.mpp) return;
    var pxPerVp = viewer.viewport.deltaPixelsFromPointsNoRotate(new OpenSeadragon.Point(1, 0), true).x;
    var umPerPx = D.mpp * W / pxPerVp;
    var target = 120 * umPerPx, pow = Math.pow(10, Math.floor(Math.log10(target))), len = pow;
    [1, 2, 5, 10].forEach(function (k) { if (k * pow <= target) len = k * pow; });
    document.getElementById("scalebar-bar").style.width = (len / umPerPx).toFixed(1) + "px";
    document.getElementById("scalebar-text").textContent =
      len >= 1000 ? (len / 1000) + " mm" : (len >= 1 ? len : len.toPrecision(1)) + " µm";
    bar.hidden = false;
  }
  viewer.addHandler("update-viewport", updateScale);

  // -- keyboard -----------------------------------------------------------------------
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var tag = (ev.target && ev.target.tagName) || "";
    if (tag === "SELECT" || tag === "TEXTAREA" || (tag === "INPUT" && ev.target.type === "text")) return;
    var k = ev.key;
    if (k === "n") goTo(state.current + 1);
    else if (k === "p") goTo(state.current < 0 ? D.lesions.length - 1 : state.current - 1);
    else if (k === "]" && D.next) location.href = D.next + ".html";
    else if (k === "[" && D.prev) location.href = D.prev + ".html";
    else if (k === "h") { var b = document.getElementById("show-heatmap"); b.checked = !b.checked; applyOpacity(); }
    else if (k === "g" && !gtBox.disabled) showOutlines(!gtBox.checked);
    else if (k === "0") viewer.viewport.goHome();
    else return;
    ev.preventDefault(); ev.stopPropagation();
  }, true);
})();
