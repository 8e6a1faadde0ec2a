// distillguard console: the only script the pages load (CSP: script-src 'self').
// Data comes from <script type="application/json"> blocks and is used as data only:
// text reaches the page through textContent / cytoscape's canvas labels, never innerHTML.
"use strict";
(function () {
  function ready(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }
  function loadScript(src, cb) {
    var s = document.createElement("script");
    s.src = src; s.onload = cb; document.head.appendChild(s);
  }
  function drawGraph(el) {
    var data = JSON.parse(document.getElementById(el.dataset.source).textContent);
    var els = [];
    data.nodes.forEach(function (n) {
      els.push({data: {id: "n:" + n.id, account: n.id, score: n.score,
                       suspended: n.suspended ? 1 : 0, label: n.id.length > 18 ? n.id.slice(0, 17) + "\u2026" : n.id}});
    });
    data.edges.forEach(function (e, i) {
      els.push({data: {id: "e" + i, source: "n:" + e.a, target: "n:" + e.b, w: e.w}});
    });
    var many = data.nodes.length > 30;
    var cy = window.cytoscape({
      container: el, elements: els, wheelSensitivity: 0.3,
      style: [
        {selector: "node", style: {"background-color": "#2c6fbb", "label": many ? "" : "data(label)",
          "font-size": 9, "width": "mapData(score, 0, 1, 6, 18)", "height": "mapData(score, 0, 1, 6, 18)",
          "color": "#222", "text-background-color": "#fff", "text-background-opacity": 0.8,
          "text-background-padding": 1}},
        {selector: "node.hover", style: {"label": "data(label)", "z-index": 10}},
        {selector: "node[suspended = 1]", style: {"background-color": "#c0392b"}},
        {selector: "edge", style: {"width": "mapData(w, 0, 5, 0.3, 3)", "line-color": "#9aa7bb",
          "opacity": 0.35}}
      ],
      layout: data.nodes.length > 400 ? {name: "grid"} :
        {name: "cose", animate: false, randomize: false, nodeRepulsion: function () { return 200000; },
         idealEdgeLength: function () { return 60; }, edgeElasticity: function (e) { return 40 / (1 + e.data("w")); },
         numIter: 800, componentSpacing: 60}
    });
    cy.on("mouseover", "node", function (evt) { evt.target.addClass("hover"); });
    cy.on("mouseout", "node", function (evt) { evt.target.removeClass("hover"); });
    cy.on("tap", "node", function (evt) {
      window.location.href = "/account?id=" + encodeURIComponent(evt.target.data("account"));
    });
    el.dataset.ready = "1";
  }
  ready(function () {
    var g = document.getElementById("graph");
    if (g) {
      if (window.cytoscape) drawGraph(g); else loadScript("/static/cytoscape.min.js", function () { drawGraph(g); });
    }
    document.querySelectorAll("[data-check-all]").forEach(function (b) {
      b.addEventListener("click", function () {
        var f = document.getElementById(b.dataset.checkAll);
        var boxes = f.querySelectorAll("input[type=checkbox][name=accounts]");
        var on = Array.prototype.some.call(boxes, function (x) { return !x.checked; });
        boxes.forEach(function (x) { x.checked = on; });
      });
    });
  });
})();
