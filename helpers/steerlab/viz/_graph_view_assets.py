"""The style and script of :mod:`steerlab.viz.graph_view`'s page (plain CSS and JavaScript, no library, no CDN).

``ROOT`` in :data:`STYLE` and ``ROOT_ID`` in :data:`SCRIPT` are replaced by the view's root ``<div>`` id, so several
views on one page (or in one notebook) never touch each other. The script reads the view's JSON data
(``<script type='application/json' class='graph-data'>``), switches levels (buttons, ``#all``, ``#level=K``),
shows hover text and edge highlights, renders a clicked node's details (``#select=<node id>`` on load), with every
token set as text (``textContent``), and records ``data-nodes-drawn``.
"""

STYLE = """<style>
ROOT { font-family: sans-serif; font-size: 13px; position: relative; }
ROOT svg.level .edge { stroke-opacity: 0.45; }
ROOT svg.level.hl .edge { stroke-opacity: 0.08; }
ROOT svg.level.hl .edge.on { stroke-opacity: 0.9; }
ROOT .node circle { stroke: #333; stroke-width: 0.5; cursor: pointer; }
ROOT .node.sel circle { stroke: #000; stroke-width: 2; }
ROOT button.lvl { margin: 0 3px 4px 0; }
ROOT button.lvl.on { font-weight: bold; background: #fbd38d; }
ROOT .tip { position: absolute; z-index: 10; max-width: 420px; background: #fffbea; border: 1px solid #d69e2e;
  padding: 4px 6px; white-space: pre-wrap; pointer-events: none; font-size: 12px; }
ROOT .tok { white-space: pre; border: 1px solid #e2e8f0; margin-right: 1px; padding: 0 1px; }
ROOT .tok.peak { border-color: #c05621; }
ROOT .ctx { margin: 3px 0; line-height: 1.7; }
ROOT .legend { color: #718096; font-size: 11px; }
ROOT .link { cursor: pointer; color: #2b6cb0; }
</style>"""

SCRIPT = r"""
(function () {
  var root = document.getElementById('ROOT_ID');
  var data = JSON.parse(root.querySelector('.graph-data').textContent);
  var svgs = root.querySelectorAll('svg.level'), buttons = root.querySelectorAll('button.lvl');
  var tip = root.querySelector('.tip'), detail = root.querySelector('.detail');
  function count() {
    var n = 0;
    root.querySelectorAll('.node').forEach(function (e) {
      var b = e.getBoundingClientRect(); if (b.width > 0 && b.height > 0) { n += 1; }
    });
    root.dataset.nodesDrawn = n;
    if (root.parentNode === document.body) { document.body.dataset.nodesDrawn = n; }
  }
  function show(k) {
    k = Math.max(0, Math.min(svgs.length - 1, k));
    svgs.forEach(function (s, i) { s.style.display = i === k ? 'block' : 'none'; });
    buttons.forEach(function (b, i) { b.classList.toggle('on', i === k); });
    root.dataset.level = k;
    root.querySelector('.summary').textContent = buttons[k].dataset.summary;
    count();
  }
  function tokens(toks, vals, peak) {
    var div = document.createElement('div'), vmax = Math.max.apply(null, vals.concat([1e-6]));
    var lo = peak === undefined ? 0 : Math.max(0, peak - 12), hi = peak === undefined ? toks.length : Math.min(toks.length, peak + 5);
    div.className = 'ctx';
    if (lo > 0) { div.appendChild(document.createTextNode('\u2026')); }
    for (var i = lo; i < hi; i++) {
      var s = document.createElement('span'), a = Math.max(0, vals[i]) / vmax;
      s.className = 'tok' + (i === peak ? ' peak' : '');
      s.textContent = toks[i].replace(/\n/g, '\u21b5').replace(/\t/g, '\u2192');
      s.style.background = 'rgba(237,137,54,' + a.toFixed(3) + ')';
      s.title = JSON.stringify(toks[i]) + ': ' + vals[i];
      div.appendChild(s);
    }
    if (hi < toks.length) { div.appendChild(document.createTextNode('\u2026')); }
    return div;
  }
  function heading(text, tag) { var h = document.createElement(tag || 'b'); h.textContent = text; return h; }
  function links(title, list) {
    var p = document.createElement('div');
    p.appendChild(heading(title + ': '));
    list.forEach(function (e, i) {
      var a = document.createElement('span'); a.className = 'link';
      a.textContent = (i ? ', ' : '') + (data.nodes[e[0]] ? data.nodes[e[0]].s : e[0]) + ' (' + e[1] + ')';
      a.addEventListener('click', function () { select(e[0]); });
      p.appendChild(a);
    });
    if (!list.length) { p.appendChild(document.createTextNode('none')); }
    return p;
  }
  function select(id) {
    var d = data.nodes[id];
    if (!d) { return; }
    root.querySelectorAll('.node').forEach(function (n) { n.classList.toggle('sel', n.dataset.id === id); });
    detail.textContent = '';
    detail.dataset.selected = id;
    var pre = heading(d.t, 'div'); pre.style.whiteSpace = 'pre-wrap'; pre.style.fontWeight = 'bold';
    detail.appendChild(pre);
    if (d.c) {
      detail.appendChild(heading('top contexts', 'div'));
      d.c.forEach(function (c) {
        var toks = c[0].map(function (i) { return data.vocab[i]; });
        detail.appendChild(tokens(toks, c[1], c[1].indexOf(Math.max.apply(null, c[1]))));
      });
    }
    if (d.a) {
      detail.appendChild(heading('activation over this prompt', 'div'));
      detail.appendChild(tokens(data.tokens, d.a));
    }
    detail.appendChild(links('strongest inputs', d.i));
    detail.appendChild(links('strongest outputs', d.o));
  }
  root.querySelectorAll('.node').forEach(function (n) {
    var t = n.querySelector('title');
    if (t) { t.remove(); }
    n.addEventListener('mouseenter', function (ev) {
      var svg = n.ownerSVGElement, id = n.dataset.id, r = root.getBoundingClientRect();
      svg.classList.add('hl');
      svg.querySelectorAll('.edge').forEach(function (e) { e.classList.toggle('on', e.dataset.s === id || e.dataset.t === id); });
      tip.textContent = data.nodes[id].t;
      tip.style.display = 'block';
      tip.style.left = Math.min(ev.clientX - r.left + 12, r.width - 300) + 'px';
      tip.style.top = (ev.clientY - r.top + 12) + 'px';
    });
    n.addEventListener('mouseleave', function () { n.ownerSVGElement.classList.remove('hl'); tip.style.display = 'none'; });
    n.addEventListener('click', function () { select(n.dataset.id); });
  });
  buttons.forEach(function (b) { b.addEventListener('click', function () { show(+b.dataset.level); }); });
  function fromHash() {
    var h = decodeURIComponent(location.hash.slice(1)), m = /^level=(\d+)$/.exec(h);
    if (h === 'all') { show(svgs.length - 1); } else if (m) { show(+m[1]); } else { show(0); }
    if (h.indexOf('select=') === 0) { select(h.slice(7)); }
  }
  if (root.parentNode === document.body) { window.addEventListener('hashchange', fromHash); }
  if (document.readyState === 'complete') { fromHash(); } else { window.addEventListener('load', fromHash); }
})();
"""
