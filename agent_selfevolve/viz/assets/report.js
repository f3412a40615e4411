// Run report: renders attempt details from the embedded JSON. Text only ever goes through textContent,
// never innerHTML, so observations holding HTML or script tags stay inert text.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("run-data").textContent);
  var byId = {};
  data.attempts.forEach(function (a, i) { a.n = i + 1; byId[a.id] = a; });
  var detail = document.getElementById("detail");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) if (arguments[i]) parent.appendChild(arguments[i]);
    return parent;
  }
  function fmt(v, d) { return v === null || v === undefined ? "-" : Number(v).toFixed(d === undefined ? 2 : d); }
  function link(id) {
    var a = el("a", "alink", id in byId ? "#" + byId[id].n + " " + id : id);
    a.href = "#a=" + encodeURIComponent(id);
    a.setAttribute("data-attempt", id);
    return a;
  }
  function kv(k, v) { return add(el("div", "kv"), el("span", "k", k), v instanceof Node ? v : el("span", "v", v)); }

  function diffView(patch) {
    var pre = el("pre", "diff");
    if (!patch) { pre.textContent = "(empty patch)"; pre.className += " muted"; return pre; }
    patch.replace(/\n$/, "").split("\n").forEach(function (line) {
      var cls = "ctx";
      if (/^(diff --git|index |new file|deleted file|similarity|rename |old mode|new mode)/.test(line)) cls = "meta";
      else if (/^(\+\+\+|---)( |$)/.test(line)) cls = "file";
      else if (line.indexOf("@@") === 0) cls = "hunk";
      else if (line[0] === "+") cls = "add";
      else if (line[0] === "-") cls = "del";
      else if (line[0] === "\\") cls = "meta";
      pre.appendChild(el("span", "dl " + cls, line + "\n"));
    });
    return pre;
  }

  function testsView(a) {
    var box = el("div", "tests");
    var groups = Object.keys(a.tests || {});
    if (!groups.length) {
      box.appendChild(el("p", "muted", a.evaluated ? "No per-test results in this evaluation (" +
        (a.hidden_source || "?") + ")." : "Not graded by hidden tests."));
      return box;
    }
    groups.forEach(function (g) {
      var ok = a.tests[g].success || [], bad = a.tests[g].failure || [];
      if (!ok.length && !bad.length && g !== "FAIL_TO_PASS" && g !== "PASS_TO_PASS") return;
      var head = el("div", "tgroup", g + "  " + ok.length + "/" + (ok.length + bad.length) + " pass");
      var ul = el("ul", "tlist");
      ok.forEach(function (t) { ul.appendChild(el("li", "pass", "\u2713 " + t)); });
      bad.forEach(function (t) { ul.appendChild(el("li", "fail", "\u2717 " + t)); });
      if (!ok.length && !bad.length) ul.appendChild(el("li", "muted", "(none)"));
      add(box, head, ul);
    });
    return box;
  }

  function toolCall(action) {
    var args = action.arguments;
    var text;
    if (args && typeof args === "object" && Object.keys(args).length === 1 && typeof args.command === "string") {
      text = "$ " + args.command;
    } else {
      text = typeof args === "string" ? args : JSON.stringify(args, null, 2);
    }
    return add(el("div", "call"), el("span", "tool", action.name), el("pre", "args", text));
  }

  function stepsView(a) {
    var box = el("div", "steps");
    if (!a.steps.length) box.appendChild(el("p", "muted", "No steps recorded."));
    a.steps.forEach(function (s) {
      var card = el("div", "step" + (s.format_error ? " format" : "") + (s.observation_error ? " obs-error" : ""));
      add(card, el("div", "step-head", "step " + s.index + "   " + s.tokens + " tokens   model " +
        fmt(s.model_s) + " s   tool " + fmt(s.tool_s) + " s"));
      if (s.thought) add(card, el("div", "label", "thought"), el("pre", "thought", s.thought));
      if (s.action) add(card, el("div", "label", "tool call"), toolCall(s.action));
      if (s.format_error) add(card, el("div", "label bad", "format error"), el("pre", "ferr", s.format_error));
      if (s.observation || s.action) {
        add(card, el("div", "label" + (s.observation_error ? " bad" : ""),
          s.observation_error ? "observation (error)" : "observation"), el("pre", "obs", s.observation));
      }
      box.appendChild(card);
    });
    return box;
  }

  function verdict(a) {
    var box = el("div", "verdict");
    var sel = el("div", "vcell", "selection reward " + fmt(a.reward) + " (" + (a.reward_source || "none") + ")");
    var hid = el("div", "vcell " + (a.resolved ? "ok" : a.evaluated ? "bad" : "muted"),
      a.evaluated ? "hidden tests: " + (a.resolved ? "RESOLVED" : "not resolved") + " (reward " +
        fmt(a.hidden_reward) + ", " + a.hidden_source + ")" : "hidden tests: not graded");
    add(box, sel, hid);
    if (a.evaluated && a.reward !== null && (a.reward >= 1) !== a.resolved) {
      box.appendChild(el("div", "vcell warn", "selection and hidden tests disagree"));
    }
    return box;
  }

  function section(title, body, open) {
    var d = el("details", "sec");
    if (open) d.open = true;
    return add(d, el("summary", null, title), body);
  }

  function showAttempt(id) {
    var a = byId[id];
    if (!a) return;
    select("data-attempt", id);
    detail.textContent = "";
    add(detail, el("h2", null, "Attempt #" + a.n), el("code", "aid", a.id));
    var meta = el("div", "grid");
    add(meta, kv("operator", a.operator || "-"), kv("node", a.node_id || "-"), kv("status", a.status),
      kv("steps", a.n_steps), kv("tokens", a.tokens.toLocaleString()), kv("elapsed", fmt(a.elapsed_s, 1) + " s"));
    if (a.parent_ids.length) {
      var ps = el("span", "v");
      a.parent_ids.forEach(function (p) { add(ps, link(p), document.createTextNode(" ")); });
      meta.appendChild(kv("parents", ps));
    }
    var kids = data.attempts.filter(function (b) { return b.parent_ids.indexOf(a.id) >= 0; });
    if (kids.length) {
      var ks = el("span", "v");
      kids.forEach(function (b) { add(ks, link(b.id), document.createTextNode(" ")); });
      meta.appendChild(kv("children", ks));
    }
    if (data.scores && a.id in data.scores) meta.appendChild(kv("SE score", fmt(data.scores[a.id], 3)));
    add(detail, meta, verdict(a));
    if (a.exit_message) detail.appendChild(el("pre", "exit", a.exit_message));
    if (a.strategy || a.guidance) {
      var g = el("div");
      if (a.strategy) add(g, el("div", "label", "strategy"), el("pre", "thought", a.strategy));
      if (a.guidance) add(g, el("div", "label", "guidance"), el("pre", "thought", a.guidance));
      detail.appendChild(section("Variant (strategy / guidance)", g, true));
    }
    var tests = testsView(a);
    if (a.eval_error) tests.appendChild(el("pre", "ferr", a.eval_error));
    add(detail, section("Hidden test results", tests, true), section("Patch", diffView(a.patch), true),
      section("Trajectory (" + a.steps.length + " steps)", stepsView(a), true));
    if (a.prompt.length) {
      var pr = el("div");
      a.prompt.forEach(function (m) { add(pr, el("div", "label", m.role), el("pre", "obs", m.content)); });
      detail.appendChild(section("First prompt", pr, false));
    }
    detail.scrollTop = 0;
  }

  function showNode(nid) {
    var n = data.tree[nid];
    if (!n) return;
    select("data-node", nid);
    detail.textContent = "";
    add(detail, el("h2", null, "Variant " + nid + (nid === data.final_node ? " (final)" : "")));
    var meta = el("div", "grid");
    add(meta, kv("parent", n.parent || "-"), kv("own s/f", n.s + "/" + n.f),
      kv("clade s/f", n.clade_s + "/" + n.clade_f), kv("CMP", fmt(n.cmp, 3)), kv("quantile", fmt(n.quantile, 3)),
      kv("depth", n.depth));
    detail.appendChild(meta);
    var v = n.variant || {};
    add(detail, el("div", "label", "strategy"), el("pre", "thought", v.strategy || "(none)"),
      el("div", "label", "guidance"), el("pre", "thought", v.guidance || "(none)"),
      el("div", "label", "model params"), el("pre", "thought", JSON.stringify(v.model_params || {})));
    if (n.diagnosis) add(detail, el("div", "label", "diagnosis"), el("pre", "thought", n.diagnosis));
    if (n.error) add(detail, el("div", "label bad", "operator error"), el("pre", "ferr", n.error));
    [["diagnosed attempts", n.parent_ids || []], ["attempts", n.attempt_ids || []]].forEach(function (p) {
      if (!p[1].length) return;
      var ul = el("ul", "alist");
      p[1].forEach(function (id) { add(ul, add(el("li"), link(id))); });
      add(detail, el("div", "label", p[0]), ul);
    });
  }

  function select(attr, value) {
    document.querySelectorAll(".selected").forEach(function (e) { e.classList.remove("selected"); });
    document.querySelectorAll("[" + attr + "]").forEach(function (e) {
      if (e.getAttribute(attr) === value) e.classList.add("selected");
    });
  }

  function table() {
    var t = el("table", "atable");
    var head = add(el("tr"), el("th", null, "#"), el("th", null, "attempt"), el("th", null, "operator"),
      el("th", null, "status"), el("th", null, "reward"), el("th", null, "hidden"), el("th", null, "steps"),
      el("th", null, "tokens"));
    t.appendChild(head);
    data.attempts.forEach(function (a) {
      var tr = add(el("tr"), el("td", null, a.n), el("td", "mono", a.id), el("td", null, a.operator),
        el("td", null, a.status), el("td", null, fmt(a.reward)),
        el("td", a.resolved ? "ok" : "bad", a.evaluated ? (a.resolved ? "\u2713" : "\u2717") : "-"),
        el("td", null, a.n_steps), el("td", null, a.tokens.toLocaleString()));
      tr.setAttribute("data-attempt", a.id);
      t.appendChild(tr);
    });
    document.getElementById("attempt-table").appendChild(t);
  }

  function route() {
    var m = /^#a=(.+)$/.exec(location.hash);
    var id = m ? decodeURIComponent(m[1]) : data.header.best_attempt_id;
    if (id && byId[id]) showAttempt(id);
  }

  function activate(target, ev) {
    var t = target.closest("[data-attempt],[data-node]");
    if (!t) return;
    if (ev) ev.preventDefault();
    if (t.hasAttribute("data-attempt")) {
      var id = t.getAttribute("data-attempt");
      try { history.replaceState(null, "", "#a=" + encodeURIComponent(id)); } catch (e) { /* file:// quirks */ }
      showAttempt(id);
    } else {
      showNode(t.getAttribute("data-node"));
    }
  }

  document.addEventListener("click", function (ev) { activate(ev.target, ev); });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" || ev.key === " ") activate(ev.target, ev);
  });
  table();
  route();
})();
