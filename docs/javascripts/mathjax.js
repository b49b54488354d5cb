// MathJax 3 configuration for pymdownx.arithmatex (generic mode).
// arithmatex wraps math in <span class="arithmatex">\( ... \)</span> (inline)
// and <div class="arithmatex">\[ ... \]</div> (display); only those are typeset.
// textmacros: \_ and friends inside \text{...} (the API pages' docstrings use them).
window.MathJax = {
  loader: {load: ["[tex]/textmacros"]},
  tex: {
    packages: {"[+]": ["textmacros"]},
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// Material's instant navigation swaps pages without a reload: typeset again.
document$.subscribe(() => {
  if (window.MathJax && MathJax.typesetPromise) {
    MathJax.startup.output.clearCache();
    MathJax.typesetClear();
    MathJax.texReset();
    MathJax.typesetPromise();
  }
});
