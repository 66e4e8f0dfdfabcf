// The interactive (plotly) figures follow the book's light / dark mode: their background is the
// page's and their text and grid lines take the mode's colours, now and whenever the reader switches
// (the theme sets data-theme="light" or "dark" on <html>; Jupyter Book adds every .js under _static/).
(function () {
  "use strict";
  var COLOURS = {
    light: { text: "#222222", grid: "#dddddd", line: "#888888" },
    dark: { text: "#dddddd", grid: "#444444", line: "#999999" },
  };

  function mode() {
    return document.documentElement.dataset.theme === "dark" ? "dark" : "light";
  }

  function restyle(div) {
    if (!window.Plotly || !div.layout || div.dataset.themeMode === mode()) {
      return;
    }
    var c = COLOURS[mode()];
    var update = {
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      "font.color": c.text,
      "title.font.color": c.text,
      "legend.font.color": c.text,
    };
    Object.keys(div.layout).forEach(function (key) {
      if (/^[xy]axis\d*$/.test(key)) {
        update[key + ".gridcolor"] = c.grid;
        update[key + ".zerolinecolor"] = c.line;
        update[key + ".linecolor"] = c.line;
        update[key + ".tickfont.color"] = c.text;
        update[key + ".title.font.color"] = c.text;
      }
    });
    (div.layout.annotations || []).forEach(function (_, i) {
      update["annotations[" + i + "].font.color"] = c.text;        // subplot titles
    });
    window.Plotly.relayout(div, update);
    div.dataset.themeMode = mode();
  }

  function restyleAll() {
    document.querySelectorAll(".plotly-graph-div").forEach(restyle);
  }

  function start() {
    restyleAll();
    new MutationObserver(restyleAll).observe(document.documentElement,
      { attributes: true, attributeFilter: ["data-theme"] });
    // figures drawn after this script ran (plotly.js renders them asynchronously)
    var tries = 0;
    var timer = setInterval(function () {
      restyleAll();
      tries += 1;
      if (tries >= 10) {
        clearInterval(timer);
      }
    }, 500);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
