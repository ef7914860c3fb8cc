// Loaded on pages with Jupyter widgets, after require.js and before the widgets HTML
// manager (embed-amd.js); see `nb_ipywidgets_js` in _config.yml.
(function () {
  "use strict";

  // 1. embed-amd.js defines AMD modules named "@jupyter-widgets/..." and loads its font
  //    files relative to the URL that RequireJS gives those modules.  By default that URL
  //    is relative to the page, so pages in book/ would request book/@jupyter-widgets/...
  //    and get 404s.  Map the module names to the local copy in _static/vendor/.
  var script = document.currentScript;
  var base = new URL("vendor/html-manager/", script ? script.src : document.baseURI).href;
  var dir = base.replace(/\/$/, "");
  window.__jupyter_widgets_assets_path__ = base;
  if (window.requirejs && window.requirejs.config) {
    window.requirejs.config({
      paths: {
        "@jupyter-widgets": dir,
        "@jupyter-widgets/html-manager/dist": dir,
      },
    });
  }

  // 2. The widgets typeset their labels with the MathJax 2 API
  //    (MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])), but the book loads
  //    MathJax 3, which has no MathJax.Hub: every widget then throws a TypeError.
  //    Provide that one call on top of MathJax 3.  MathJax is loaded with `defer`, so
  //    it is in place when DOMContentLoaded fires, before the widgets render.
  function installMathJax2Shim() {
    var mj = window.MathJax;
    if (!mj || !mj.version || mj.Hub) {
      return; // no MathJax 3 on this page, or it already has a Hub
    }
    mj.Hub = {
      Queue: function () {
        var elements = [];
        for (var i = 0; i < arguments.length; i++) {
          var cmd = arguments[i];
          if (Array.isArray(cmd) && cmd[0] === "Typeset" && cmd[2]) {
            elements.push(cmd[2]);
          }
        }
        var ready = mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
        return ready.then(function () {
          if (typeof mj.typesetPromise === "function") {
            return mj.typesetPromise(elements.length ? elements : undefined);
          }
        });
      },
    };
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", installMathJax2Shim);
  } else {
    installMathJax2Shim();
  }
})();
