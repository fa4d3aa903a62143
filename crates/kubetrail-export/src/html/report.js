// kubetrail HTML report: the page's whole program, hand-written, no dependencies, no network.
// The data layout is written by crates/kubetrail-export/src/html.rs (HTML_DATA_VERSION 1):
//   families: [cluster, root, firstRow, endRow, requests, errors, warnings, startUs, endUs]
//   rows (pre-order, a family's rows contiguous):
//     [ref, kind, namespace, name, parentRow, family, firstReq, endReq, startUs, endUs, deleted, [uid], [traceIdx, spanId, …]]
//   requests (by row, then time):
//     [startUs, durUs, actor, name, verb, code, flags, user, userAgent, traceIdx, spanId, auditId, detail]
//   details: [[[kind 0 added|1 changed|2 removed, path, old, new]…], moreChanges, diffCount, snapshot, eventMessage, error]
// Strings are indices into `strings` (0 = none); trace ids indices into `ids`.
(function () {
  "use strict";
  var F_ERROR = 1, F_WARNING = 2, F_STATUS = 4, F_NOOP = 8, F_INCOMPLETE = 16, F_EVENT = 32;
  var ROW_H = 22, OVERSCAN = 8;
  var PALETTE = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22",
    "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1", "#636363"];

  // The data is gzip + base64 (html.rs): inflated with the browser's own DecompressionStream.
  function inflate(el) {
    var bin = atob(el.textContent.trim()), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text();
  }
  inflate(document.getElementById("kubetrail-data")).then(function (text) {
    main(JSON.parse(text));
  }).catch(function (e) {
    document.getElementById("families-summary").textContent = "This report could not be read: " + e +
      " (it needs a browser with DecompressionStream: Chrome/Edge 80+, Firefox 113+, Safari 16.4+).";
    throw e;
  });

  function main(D) {
  var S = D.strings, IDS = D.ids, FAM = D.families, ROWS = D.rows, REQ = D.requests, DET = D.details;
  var nRows = ROWS.length, nReq = REQ.length;
  var $ = function (id) { return document.getElementById(id); };

  // ---- derived tables -------------------------------------------------------------------
  var depth = new Int32Array(nRows), subEnd = new Int32Array(nRows);
  (function () {
    var stack = [];
    for (var i = 0; i < nRows; i++) {
      var p = ROWS[i][4];
      depth[i] = p < 0 ? 0 : depth[p] + 1;
      while (stack.length && (depth[stack[stack.length - 1]] >= depth[i] || ROWS[stack[stack.length - 1]][5] !== ROWS[i][5])) {
        subEnd[stack.pop()] = i;
      }
      stack.push(i);
    }
    while (stack.length) subEnd[stack.pop()] = nRows;
  })();
  var reqRow = new Int32Array(nReq);
  for (var ri = 0; ri < nRows; ri++) for (var qi = ROWS[ri][6]; qi < ROWS[ri][7]; qi++) reqRow[qi] = ri;

  // Actors, most active first; colours follow that order.
  var actorCount = {};
  for (var a = 0; a < nReq; a++) actorCount[REQ[a][2]] = (actorCount[REQ[a][2]] || 0) + 1;
  var actors = Object.keys(actorCount).map(Number).sort(function (x, y) {
    return actorCount[y] - actorCount[x] || (S[x] < S[y] ? -1 : 1);
  });
  var colour = {};
  actors.forEach(function (s, i) { colour[s] = PALETTE[i % PALETTE.length]; });

  function str(i) { return S[i] || ""; }
  function kindOf(r) {
    var k = str(ROWS[r][1]);
    if (k) return k;
    var ref = str(ROWS[r][0]);
    return ref.split("/")[0];
  }
  function nameOf(r) {
    var n = str(ROWS[r][3]);
    if (n) return n;
    var parts = str(ROWS[r][0]).split("/");
    return parts[parts.length - 1];
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function iso(us) { return new Date(D.t0ms + Math.floor(us / 1000)).toISOString(); }
  function clock(us, withMs) {
    var s = iso(us).slice(11, withMs ? 23 : 19);
    return s;
  }
  function dateTime(us) { return iso(us).replace("T", " ").slice(0, 23); }
  function dur(us) {
    if (us < 1000) return us + "µs";
    if (us < 1e6) return (us / 1000).toFixed(us < 1e4 ? 1 : 0) + "ms";
    var s = us / 1e6;
    if (s < 60) return s.toFixed(s < 10 ? 3 : 1) + "s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
  }
  function num(n) { return n.toLocaleString("en-US"); }
  function jaegerLink(traceIdx, span) {
    if (!D.jaeger) return "";
    var url = D.jaeger + "/trace/" + IDS[traceIdx] + (span ? "?uiFind=" + span : "");
    return ' <a href="' + esc(url) + '" target="_blank" rel="noopener">open in Jaeger</a>';
  }

  // ---- filters and search ---------------------------------------------------------------
  var state = { q: [], errors: false, actor: -1, hideStatus: false, family: -1, viewStart: 0, viewEnd: 1,
    selRow: -1, selReq: -1 };
  var reqText = null, rowText = null;
  function buildText() {
    if (reqText) return;
    rowText = new Array(nRows);
    for (var i = 0; i < nRows; i++) {
      var r = ROWS[i];
      rowText[i] = (str(r[0]) + " " + str(r[1]) + " " + str(r[2]) + " " + str(r[3])).toLowerCase();
    }
    reqText = new Array(nReq);
    for (var j = 0; j < nReq; j++) {
      var q = REQ[j];
      reqText[j] = (str(q[2]) + " " + str(q[3]) + " " + str(q[4]) + " " + (q[5] || "") + " " + str(q[7])).toLowerCase();
    }
  }
  function filtering() { return state.q.length > 0 || state.errors || state.actor >= 0 || state.hideStatus; }
  var reqOk = new Uint8Array(nReq), rowShown = new Uint8Array(nRows), famMatch = new Int32Array(FAM.length);
  function applyFilters() {
    var active = filtering();
    if (state.q.length) buildText();
    famMatch.fill(0);
    for (var i = 0; i < nRows; i++) {
      var r = ROWS[i], tokensLeft = state.q;
      for (var j = r[6]; j < r[7]; j++) {
        var q = REQ[j], ok = 1;
        if (state.errors && !(q[6] & (F_ERROR | F_WARNING))) ok = 0;
        else if (state.actor >= 0 && q[2] !== state.actor) ok = 0;
        else if (state.hideStatus && (q[6] & F_STATUS)) ok = 0;
        else if (tokensLeft.length) {
          for (var t = 0; t < tokensLeft.length; t++) {
            var tok = tokensLeft[t];
            if (reqText[j].indexOf(tok) < 0 && rowText[i].indexOf(tok) < 0 && String(q[5]) !== tok) { ok = 0; break; }
          }
        }
        reqOk[j] = ok;
        if (ok) famMatch[r[5]]++;
      }
      rowShown[i] = 0;
    }
    // A row is shown when it or something below it has a matching request (or, searching
    // without other filters, when its own name matches); everything is shown unfiltered.
    for (var k = nRows - 1; k >= 0; k--) {
      var row = ROWS[k], show = !active;
      if (!show) {
        for (var m = row[6]; m < row[7] && !show; m++) if (reqOk[m]) show = true;
        if (!show && state.q.length && !state.errors && state.actor < 0) {
          show = state.q.every(function (tk) { return rowText[k].indexOf(tk) >= 0; });
        }
      }
      if (show || rowShown[k]) {
        rowShown[k] = 1;
        if (row[4] >= 0) rowShown[row[4]] = 1;
      }
    }
  }

  // ---- landing view: the families -------------------------------------------------------
  function renderFamilies() {
    var body = $("families").tBodies[0], html = [], active = filtering(), shown = 0;
    for (var f = 0; f < FAM.length; f++) {
      var fam = FAM[f];
      if (active && famMatch[f] === 0 && !familyRowMatch(f)) continue;
      shown++;
      var root = famRoot(f);
      html.push('<tr data-f="' + f + '"><td><a href="#family/' + f + '">' + esc(str(fam[1])) + "</a></td><td>" +
        esc(root >= 0 ? kindOf(root) : "") + "</td><td>" + esc(str(fam[0])) + '</td><td class="n">' + num(fam[3] - fam[2]) +
        '</td><td class="n">' + (active ? num(famMatch[f]) + ' <span class="muted">/ ' + num(fam[4]) + "</span>" : num(fam[4])) +
        '</td><td class="n' + (fam[5] ? " err" : "") + '">' + num(fam[5]) + '</td><td class="n' + (fam[6] ? " warn" : "") + '">' +
        num(fam[6]) + "</td><td>" + esc(dateTime(fam[7])) + '</td><td class="n">' + esc(dur(fam[8] - fam[7])) + "</td></tr>");
    }
    if (!FAM.length) html.push('<tr><td colspan="9" class="empty">No spans in this report: the input had no mutating requests that passed the filter.</td></tr>');
    else if (!shown) html.push('<tr><td colspan="9" class="empty">No family matches.</td></tr>');
    body.innerHTML = html.join("");
    var total = 0, errs = 0;
    FAM.forEach(function (x) { total += x[4]; errs += x[5]; });
    $("families-summary").textContent = num(FAM.length) + " families, " + num(nRows) + " objects, " + num(total) +
      " requests, " + num(errs) + " errors" + (D.title ? " — " + D.title : "") + (active ? " (" + shown + " shown)" : "");
  }
  function familyRowMatch(f) {
    for (var i = FAM[f][2]; i < FAM[f][3]; i++) if (rowShown[i]) return true;
    return false;
  }
  function famRoot(f) { return FAM[f][3] > FAM[f][2] ? FAM[f][2] : -1; }

  // ---- family view: the Gantt -----------------------------------------------------------
  var collapsed = new Uint8Array(nRows), visible = [];
  function computeVisible() {
    visible = [];
    if (state.family < 0) return;
    var fam = FAM[state.family], active = filtering();
    for (var i = fam[2]; i < fam[3]; i++) {
      if (active && !rowShown[i]) { i = subEnd[i] - 1; continue; }
      visible.push(i);
      if (collapsed[i]) i = subEnd[i] - 1;
    }
    $("spacer").style.height = visible.length * ROW_H + "px";
  }
  function laneWidth() { return Math.max(50, $("scroller").clientWidth - labelWidth()); }
  var labelW = 0;
  function labelWidth() {
    if (!labelW) labelW = parseFloat(getComputedStyle(document.documentElement).getPropertyValue("--label")) || 380;
    return labelW;
  }
  function x(us, w) { return (us - state.viewStart) / (state.viewEnd - state.viewStart) * w; }

  function renderRows() {
    if (state.family < 0) return;
    var sc = $("scroller"), top = sc.scrollTop, h = sc.clientHeight, w = laneWidth();
    var first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    var last = Math.min(visible.length, Math.ceil((top + h) / ROW_H) + OVERSCAN);
    var active = filtering(), out = [];
    var vs = state.viewStart, ve = state.viewEnd;
    for (var v = first; v < last; v++) {
      var i = visible[v], r = ROWS[i], hasKids = subEnd[i] > i + 1;
      var count = r[7] - r[6];
      out.push('<div class="row' + (i === state.selRow ? " sel" : "") + '" data-row="' + i + '" style="top:' + v * ROW_H + 'px">' +
        '<div class="label" style="padding-left:' + (4 + depth[i] * 14) + 'px" title="' + esc(str(r[0])) + '">' +
        '<span class="tog">' + (hasKids ? (collapsed[i] ? "▸" : "▾") : "") + "</span>" +
        '<span class="kind">' + esc(kindOf(i)) + "</span>" + '<span class="nm' + (r[10] ? " deleted" : "") + '">' + esc(nameOf(i)) + "</span>" +
        '<span class="cnt">' + (count ? count : "") + (collapsed[i] && hasKids ? " +" + (subEnd[i] - i - 1) : "") + "</span></div>" +
        '<div class="lane">');
      if (r[9] >= vs && r[8] <= ve) {
        var ex0 = Math.max(-2, x(r[8], w)), ex1 = Math.min(w + 2, x(r[9], w));
        out.push('<div class="extent" style="left:' + ex0.toFixed(1) + "px;width:" + Math.max(1, ex1 - ex0).toFixed(1) + 'px"></div>');
      }
      // Bars that would land on the pixels of the previous one (same actor, nothing to mark)
      // are not drawn again: a row never holds more bars than it has pixels.
      var lastEnd = -1e9, lastActor = -1;
      for (var j = r[6]; j < r[7]; j++) {
        var q = REQ[j];
        if (active && !reqOk[j]) continue;
        var s0 = q[0], s1 = q[0] + q[1];
        if (s1 < vs || s0 > ve) continue;
        var bx = x(s0, w), bw = Math.max(3, x(s1, w) - bx);
        var plain = !(q[6] & (F_ERROR | F_WARNING)) && j !== state.selReq;
        if (plain && q[2] === lastActor && bx + bw <= lastEnd + 1) continue;
        if (plain) { lastEnd = Math.max(lastEnd, bx + bw); lastActor = q[2]; } else { lastActor = -1; }
        var cls = "bar" + (q[6] & F_ERROR ? " err" : q[6] & F_WARNING ? " warn" : "") + (j === state.selReq ? " sel" : "");
        out.push('<div class="' + cls + '" data-q="' + j + '" style="left:' + bx.toFixed(1) + "px;width:" + bw.toFixed(1) +
          "px;background:" + colour[q[2]] + '" title="' + esc(str(q[3]) + " · " + str(q[2]) + (q[5] ? " · " + q[5] : "") + " · " + clock(s0, true) + " +" + dur(q[1])) + '"></div>');
      }
      out.push("</div></div>");
    }
    $("rows").innerHTML = out.join("");
  }

  var TICKS = [1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 15e6, 3e7, 6e7, 12e7, 3e8, 6e8, 9e8, 18e8,
    36e8, 72e8, 108e8, 216e8, 432e8, 864e8];
  function renderAxis() {
    var w = laneWidth(), span = state.viewEnd - state.viewStart, step = TICKS[TICKS.length - 1];
    for (var t = 0; t < TICKS.length; t++) if (span / TICKS[t] <= w / 90) { step = TICKS[t]; break; }
    var abs0 = D.t0ms * 1000, first = Math.ceil((state.viewStart + abs0) / step) * step - abs0, out = [];
    for (var u = first; u <= state.viewEnd; u += step) {
      out.push('<div class="tick" style="left:' + x(u, w).toFixed(1) + 'px">' + clock(u, step < 1e6) + "</div>");
    }
    $("axis").innerHTML = out.join("");
  }
  function render() { renderAxis(); renderRows(); }
  var pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; render(); });
  }

  function familyExtent(f) {
    var fam = FAM[f], s = fam[7], e = fam[8];
    if (e <= s) e = s + 1000;
    var pad = (e - s) * 0.02;
    return [s - pad, e + pad];
  }
  function fit() {
    var ex = familyExtent(state.family);
    state.viewStart = ex[0];
    state.viewEnd = ex[1];
    schedule();
  }
  function zoom(factor, atFraction) {
    var span = state.viewEnd - state.viewStart, ex = familyExtent(state.family), full = ex[1] - ex[0];
    var next = Math.min(full * 4, Math.max(200, span * factor));
    var at = state.viewStart + span * atFraction;
    state.viewStart = at - next * atFraction;
    state.viewEnd = state.viewStart + next;
    schedule();
  }
  function pan(dxPx) {
    var d = dxPx / laneWidth() * (state.viewEnd - state.viewStart);
    state.viewStart += d;
    state.viewEnd += d;
    schedule();
  }

  function openFamily(f) {
    state.family = f;
    state.selRow = -1;
    state.selReq = -1;
    $("families-view").hidden = true;
    $("family-view").hidden = false;
    var fam = FAM[f];
    $("fam-title").textContent = str(fam[1]);
    $("crumb").textContent = "› " + str(fam[1]) + (str(fam[0]) ? " @ " + str(fam[0]) : "");
    $("fam-stats").textContent = num(fam[3] - fam[2]) + " objects · " + num(fam[4]) + " requests · " + num(fam[5]) +
      " errors · " + num(fam[6]) + " warnings · " + dateTime(fam[7]) + " → " + clock(fam[8], true) + " (" + dur(fam[8] - fam[7]) + ")";
    var seen = {};
    for (var i = fam[2]; i < fam[3]; i++) for (var j = ROWS[i][6]; j < ROWS[i][7]; j++) seen[REQ[j][2]] = (seen[REQ[j][2]] || 0) + 1;
    var legend = actors.filter(function (s) { return seen[s]; }).map(function (s) {
      return '<span data-actor="' + s + '" title="Only this actor"><i style="background:' + colour[s] + '"></i>' + esc(str(s)) + " " + num(seen[s]) + "</span>";
    });
    legend.push('<span><i class="mark-err"></i>error</span><span><i class="mark-warn"></i>Warning</span>');
    $("legend").innerHTML = legend.join("");
    $("scroller").scrollTop = 0;
    computeVisible();
    fit();
    render();
  }
  function showFamilies() {
    state.family = -1;
    $("family-view").hidden = true;
    $("families-view").hidden = false;
    $("crumb").textContent = "";
    closeDetails();
    renderFamilies();
  }

  // ---- details --------------------------------------------------------------------------
  function closeDetails() {
    $("details").hidden = true;
    document.body.classList.remove("details-open");
    state.selReq = -1;
    state.selRow = -1;
  }
  function kv(pairs) {
    return '<dl class="kv">' + pairs.filter(function (p) { return p[1] !== "" && p[1] != null; }).map(function (p) {
      return "<dt>" + esc(p[0]) + "</dt><dd" + (p[2] ? ' class="mono"' : "") + ">" + (p[3] ? p[1] : esc(p[1])) + "</dd>";
    }).join("") + "</dl>";
  }
  function showRequest(j) {
    var q = REQ[j], row = reqRow[j], r = ROWS[row], d = q[12] >= 0 ? DET[q[12]] : null;
    state.selReq = j;
    state.selRow = -1;
    var h = ["<h2>" + esc(str(q[3])) + "</h2>", '<div class="sub">' + esc(str(r[0])) + "</div>"];
    if (d && d[5]) h.push('<div class="msg ' + (q[6] & F_ERROR ? "err" : "warn") + '" id="d-error">' + esc(str(d[5])) + "</div>");
    if (d && d[4]) h.push("<h3>Kubernetes Event</h3>", '<div class="msg' + (q[6] & F_WARNING ? " warn" : "") + '" id="d-event">' + esc(str(d[4])) + "</div>");
    h.push("<h3>Request</h3>", kv([
      ["actor", str(q[2])], ["user", str(q[7])], ["user agent", str(q[8])], ["verb", str(q[4])],
      ["response code", q[5] ? String(q[5]) : "—"], ["start", dateTime(q[0]) + " UTC"], ["latency", dur(q[1])],
      ["flags", [q[6] & F_STATUS ? "status update" : "", q[6] & F_NOOP ? "no-op update" : "", q[6] & F_INCOMPLETE ? "incomplete (no final stage)" : ""].filter(Boolean).join(", ")],
      ["audit ID", str(q[11]), true], ["trace ID", IDS[q[9]], true], ["span ID", q[10] + jaegerLink(q[9], q[10]), true, true]
    ]));
    h.push("<h3>Diff</h3>");
    if (d && d[0].length) {
      h.push('<table class="diff" id="d-diff">');
      d[0].forEach(function (c) {
        var k = ["added", "changed", "removed"][c[0]], sym = ["+", "~", "−"][c[0]];
        var val = c[0] === 0 ? '<span class="new">' + esc(str(c[3])) + "</span>" :
          c[0] === 2 ? '<span class="old">' + esc(str(c[2])) + "</span>" :
          '<span class="old">' + esc(str(c[2])) + '</span> → <span class="new">' + esc(str(c[3])) + "</span>";
        h.push('<tr class="' + k + '"><td class="k" title="' + k + '">' + sym + '</td><td><code>' + esc(str(c[1])) + "</code><br>" + val + "</td></tr>");
      });
      h.push("</table>");
      if (d[1]) h.push('<p class="muted">… and ' + num(d[1]) + " more changes</p>");
    } else if (q[6] & F_NOOP) {
      h.push('<p class="muted">No change: a no-op update.</p>');
    } else if (d && d[2] === 0) {
      h.push('<p class="muted">No change to the fields kubetrail compares.</p>');
    } else {
      h.push('<p class="muted">No diff: kubetrail had not seen this object\'s earlier state (or the request carried no body).</p>');
    }
    if (d && d[3]) {
      var snap = str(d[3]), pretty = snap;
      try { pretty = JSON.stringify(JSON.parse(snap), null, 2); } catch (e) { pretty = snap + "\n… (cut)"; }
      h.push("<h3>Snapshot</h3>", '<details open><summary>the object as ' + (str(q[4]) === "delete" ? "deleted" : "created") + '</summary><pre class="snap" id="d-snapshot">' + esc(pretty) + "</pre></details>");
    }
    showDetails(h.join(""));
  }
  function showObject(i) {
    var r = ROWS[i];
    state.selRow = i;
    state.selReq = -1;
    var spans = [];
    for (var k = 0; k < r[12].length; k += 2) {
      spans.push('<div class="mono">trace ' + esc(IDS[r[12][k]]) + " · span " + esc(r[12][k + 1]) + jaegerLink(r[12][k], r[12][k + 1]) + "</div>");
    }
    var errs = 0, warns = 0;
    for (var j = r[6]; j < r[7]; j++) { if (REQ[j][6] & F_ERROR) errs++; if (REQ[j][6] & F_WARNING) warns++; }
    var h = ["<h2>" + esc(kindOf(i)) + " " + esc(nameOf(i)) + "</h2>", '<div class="sub">' + esc(str(r[0])) + "</div>",
      kv([["kind", kindOf(i)], ["namespace", str(r[2])], ["uid", r[11].map(str).join(", "), true],
        ["owner", r[4] >= 0 ? str(ROWS[r[4]][0]) : "— (top of the family)"],
        ["requests", num(r[7] - r[6]) + (errs ? ", " + errs + " errors" : "") + (warns ? ", " + warns + " warnings" : "")],
        ["owns", num(subEnd[i] - i - 1) + " objects"],
        ["active", dateTime(r[8]) + " → " + clock(r[9], true) + " (" + dur(r[9] - r[8]) + ")"], ["deleted", r[10] ? "yes" : ""]]),
      "<h3>Spans</h3>", spans.join("") || '<p class="muted">none (placed from its requests only)</p>'];
    showDetails(h.join(""));
  }
  function showDetails(html) {
    $("details-body").innerHTML = html;
    $("details").hidden = false;
    document.body.classList.add("details-open");
    $("details").scrollTop = 0;
    schedule();
  }

  // ---- events ---------------------------------------------------------------------------
  var searchTimer = 0;
  function readFilters() {
    state.q = $("q").value.toLowerCase().split(/\s+/).filter(Boolean);
    state.errors = $("f-errors").checked;
    state.actor = $("f-actor").value === "" ? -1 : Number($("f-actor").value);
    state.hideStatus = $("f-status").checked;
    applyFilters();
    if (state.family >= 0) { computeVisible(); render(); } else renderFamilies();
  }
  $("q").addEventListener("input", function () {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(readFilters, nReq > 20000 ? 150 : 60);
  });
  $("q").addEventListener("keydown", function (e) { if (e.key === "Enter") { clearTimeout(searchTimer); readFilters(); } });
  ["f-errors", "f-actor", "f-status"].forEach(function (id) { $(id).addEventListener("change", readFilters); });
  $("f-actor").innerHTML = '<option value="">all actors</option>' + actors.map(function (s) {
    return '<option value="' + s + '">' + esc(str(s)) + " (" + num(actorCount[s]) + ")</option>";
  }).join("");
  $("legend").addEventListener("click", function (e) {
    var el = e.target.closest("[data-actor]");
    if (!el) return;
    $("f-actor").value = $("f-actor").value === el.dataset.actor ? "" : el.dataset.actor;
    readFilters();
  });
  $("families").addEventListener("click", function (e) {
    var tr = e.target.closest("tr[data-f]");
    if (!tr) return;
    e.preventDefault();
    location.hash = "#family/" + tr.dataset.f;
  });
  function route() {
    var m = /^#family\/(\d+)$/.exec(location.hash);
    if (m && Number(m[1]) < FAM.length) openFamily(Number(m[1]));
    else showFamilies();
  }
  window.addEventListener("hashchange", route);
  $("scroller").addEventListener("scroll", schedule, { passive: true });
  window.addEventListener("resize", function () { if (state.family >= 0) schedule(); });
  $("zoom-in").addEventListener("click", function () { zoom(0.5, 0.5); });
  $("zoom-out").addEventListener("click", function () { zoom(2, 0.5); });
  $("zoom-fit").addEventListener("click", fit);
  $("expand-all").addEventListener("click", function () { collapsed.fill(0); computeVisible(); render(); });
  $("collapse-all").addEventListener("click", function () {
    if (state.family < 0) return;
    var fam = FAM[state.family];
    for (var i = fam[2]; i < fam[3]; i++) collapsed[i] = depth[i] >= 1 && subEnd[i] > i + 1 ? 1 : 0;
    computeVisible();
    render();
  });
  $("details-close").addEventListener("click", function () { closeDetails(); schedule(); });
  document.addEventListener("keydown", function (e) {
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    if (e.key === "Escape") { closeDetails(); schedule(); }
    if (state.family < 0) return;
    if (e.key === "+" || e.key === "=") zoom(0.5, 0.5);
    else if (e.key === "-") zoom(2, 0.5);
    else if (e.key === "0") fit();
    else if (e.key === "ArrowLeft") pan(-laneWidth() / 5);
    else if (e.key === "ArrowRight") pan(laneWidth() / 5);
  });
  function onWheel(e) {
    var lane = e.target.closest(".lane, .axis-lane");
    if (!lane) return;
    if (e.ctrlKey || e.altKey || e.metaKey) {
      e.preventDefault();
      var rect = $("axis").getBoundingClientRect();
      zoom(e.deltaY > 0 ? 1.25 : 0.8, Math.min(1, Math.max(0, (e.clientX - rect.left) / rect.width)));
    } else if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
      e.preventDefault();
      pan(e.shiftKey && !e.deltaX ? e.deltaY : e.deltaX);
    }
  }
  $("gantt").addEventListener("wheel", onWheel, { passive: false });
  var drag = null;
  $("gantt").addEventListener("mousedown", function (e) {
    var lane = e.target.closest(".lane, .axis-lane");
    if (!lane || e.button !== 0) return;
    drag = { x: e.clientX, start: state.viewStart, end: state.viewEnd, moved: false, el: lane };
  });
  window.addEventListener("mousemove", function (e) {
    if (!drag) return;
    var dx = e.clientX - drag.x;
    if (Math.abs(dx) > 3) drag.moved = true;
    if (!drag.moved) return;
    var d = dx / laneWidth() * (drag.end - drag.start);
    state.viewStart = drag.start - d;
    state.viewEnd = drag.end - d;
    $("gantt").classList.add("dragging");
    schedule();
  });
  window.addEventListener("mouseup", function () {
    if (drag && drag.moved) suppressClick = true;
    drag = null;
  });
  var suppressClick = false;
  $("rows").addEventListener("click", function (e) {
    if (suppressClick) { suppressClick = false; return; }
    var bar = e.target.closest(".bar");
    if (bar) { showRequest(Number(bar.dataset.q)); return; }
    var rowEl = e.target.closest(".row");
    if (!rowEl) return;
    var i = Number(rowEl.dataset.row);
    if (e.target.closest(".tog") && subEnd[i] > i + 1) {
      collapsed[i] ^= 1;
      computeVisible();
      render();
      return;
    }
    if (e.target.closest(".label")) showObject(i);
  });

  // ---- start ----------------------------------------------------------------------------
  applyFilters();
  route();
  // For tests and the curious: how long the first render took, and a few handles.
  window.kubetrailReport = {
    version: D.version, families: FAM.length, rows: nRows, requests: nReq,
    firstRenderMs: performance.now(),
    visibleRows: function () { return visible.length; },
    openFamily: function (f) { location.hash = "#family/" + f; },
    rowOf: function (ref) { for (var i = 0; i < nRows; i++) if (str(ROWS[i][0]) === ref) return i; return -1; },
    scrollToRow: function (i) {
      var v = visible.indexOf(i);
      if (v >= 0) { $("scroller").scrollTop = Math.max(0, v * ROW_H - ROW_H * 3); render(); }
      return v;
    }
  };
  document.documentElement.dataset.ready = "1";
  }
})();
