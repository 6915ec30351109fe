// The gateway's status page: polls status.json every second and draws it.
// Counters and histogram buckets arrive cumulative; rates and percentiles are differences
// between snapshots, timed by the server's clock (the browser's may be throttled or virtual).
"use strict";

(() => {
  const SERVICES = ["application", "infrastructure", "transaction"];
  const POLL_MS = 1000;
  const RATE_WINDOW_S = 5;
  const LATENCY_WINDOW_S = 30;
  const SPARK_WINDOW_S = 60;
  const KEEP_S = 65;
  const SPARK_W = 300;
  const SPARK_H = 48;
  const DASH = "\u2013"; // nothing to show yet (escaped: the script stays ASCII whatever charset it is read in)

  const history = []; // snapshots, oldest first
  let failures = 0;

  const number = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const oneDecimal = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const twoDecimals = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

  const field = (root, name) => root.querySelector(`[data-field="${name}"]`);

  function setText(root, name, text, tone) {
    const node = field(root, name);
    node.textContent = text;
    if (tone !== undefined) {
      node.classList.toggle("bad", tone === "bad");
      node.classList.toggle("warn", tone === "warn");
    }
  }

  function setBadge(node, text, tone) {
    node.textContent = text;
    node.className = node.className.replace(/\b(badge|pill)-\w+/g, "").trim();
    const kind = node.classList.contains("pill") ? "pill" : "badge";
    node.classList.add(`${kind}-${tone}`);
  }

  // ---- formatting ----
  function formatRate(value) {
    if (value === null || !Number.isFinite(value)) return DASH;
    if (value === 0) return "0";
    if (value >= 100) return number.format(value);
    if (value >= 10) return oneDecimal.format(value);
    return twoDecimals.format(value);
  }

  function formatCount(value) {
    return value === null || value === undefined ? DASH : number.format(value);
  }

  function formatSeconds(value) {
    if (value === null || !Number.isFinite(value)) return DASH;
    const ms = value * 1000;
    if (ms < 1) return "<1 ms";
    if (ms < 10) return `${oneDecimal.format(ms)} ms`;
    if (ms < 1000) return `${number.format(ms)} ms`;
    return `${twoDecimals.format(value)} s`;
  }

  function formatAge(seconds) {
    if (seconds === null || !Number.isFinite(seconds)) return DASH;
    if (seconds < 10) return `${oneDecimal.format(seconds)} s`;
    if (seconds < 60) return `${number.format(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
    return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
  }

  function formatBytes(value) {
    if (value === null || !Number.isFinite(value)) return DASH;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let scaled = value;
    let unit = 0;
    while (scaled >= 1024 && unit < units.length - 1) {
      scaled /= 1024;
      unit += 1;
    }
    return `${scaled >= 100 ? number.format(scaled) : oneDecimal.format(scaled)} ${units[unit]}`;
  }

  // ---- arithmetic over snapshots ----
  // The oldest snapshot at most `seconds` older than the latest; else the one before the latest.
  function baseline(seconds) {
    const latest = history[history.length - 1];
    for (const snap of history) {
      if (snap !== latest && latest.time - snap.time <= seconds) return snap;
    }
    return history.length >= 2 ? history[history.length - 2] : null;
  }

  function rate(older, newer, read) {
    if (!older) return null;
    const before = read(older);
    const after = read(newer);
    const elapsed = newer.time - older.time;
    if (before === null || after === null || elapsed <= 0) return null;
    return Math.max(0, (after - before) / elapsed);
  }

  // histogram_quantile over the buckets observed between two snapshots, interpolating linearly.
  function percentile(older, newer, q) {
    if (!older || !newer) return null;
    if (older.le.length === 0) older = { le: newer.le, counts: newer.counts.map(() => 0), count: 0 }; // no series yet
    if (older.le.length !== newer.le.length) return null;
    const total = newer.count - older.count;
    if (total <= 0) return null;
    const rank = q * total;
    let previous = 0;
    for (let i = 0; i < newer.le.length; i += 1) {
      const cumulative = newer.counts[i] - older.counts[i];
      if (cumulative >= rank) {
        const lower = i === 0 ? 0 : newer.le[i - 1];
        const inBucket = cumulative - previous;
        const fraction = inBucket > 0 ? (rank - previous) / inBucket : 1;
        return lower + (newer.le[i] - lower) * fraction;
      }
      previous = cumulative;
    }
    return newer.le.length ? newer.le[newer.le.length - 1] : null; // beyond the last bound
  }

  const sum = (object) => Object.values(object || {}).reduce((total, value) => total + value, 0);

  // ---- drawing ----
  function drawSparkline(svg, name, latest) {
    const points = [];
    for (let i = 1; i < history.length; i += 1) {
      const older = history[i - 1];
      const newer = history[i];
      if (latest.time - newer.time > SPARK_WINDOW_S) continue;
      const value = rate(older, newer, (snap) => snap.services[name].acked);
      if (value !== null) points.push([newer.time, value]);
    }
    const peak = points.reduce((max, [, value]) => Math.max(max, value), 0);
    // Spread what there is over the width: the first minute after opening the page fills it too.
    const start = points.length ? Math.min(points[0][0], latest.time - 1e-3) : latest.time - SPARK_WINDOW_S;
    const span = latest.time - start;
    const xy = points.map(([time, value]) => {
      const x = ((time - start) / span) * SPARK_W;
      const y = SPARK_H - 2 - (peak > 0 ? (value / peak) * (SPARK_H - 6) : 0);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    svg.querySelector(".spark-line").setAttribute("points", xy.join(" "));
    const area = xy.length
      ? `M${xy[0].split(",")[0]},${SPARK_H} L${xy.join(" L")} L${xy[xy.length - 1].split(",")[0]},${SPARK_H} Z`
      : "";
    svg.querySelector(".spark-area").setAttribute("d", area);
    return { peak: points.length ? peak : null, span: points.length ? span : null };
  }

  function renderService(name, latest, recent, slow, problems) {
    const card = document.querySelector(`[data-service="${name}"]`);
    const now = latest.services[name];
    const read = (key) => (snap) => snap.services[name][key];

    const throughput = rate(recent, latest, read("acked"));
    setText(card, "throughput", formatRate(throughput));
    const spark = drawSparkline(field(card, "sparkline"), name, latest);
    setText(card, "peak", formatRate(spark.peak));
    setText(card, "span", spark.span === null ? DASH : formatAge(spark.span));
    setText(card, "acked", formatCount(now.acked));

    const send = name === "transaction" ? (snap) => snap.outbox.commit : (snap) => snap.services[name].send;
    const http = (snap) => snap.services[name].http;
    for (const q of [50, 95, 99]) {
      setText(card, `send-p${q}`, formatSeconds(slow ? percentile(send(slow), send(latest), q / 100) : null));
      setText(card, `http-p${q}`, formatSeconds(slow ? percentile(http(slow), http(latest), q / 100) : null));
    }

    const requests = rate(recent, latest, (snap) => sum(snap.services[name].requests));
    setText(card, "requests", formatRate(requests));
    const byStatus = Object.keys(now.requests).sort().map((status) => {
      const perSecond = rate(recent, latest, (snap) => snap.services[name].requests[status] || 0);
      return `${status}: ${formatRate(perSecond)}/s`;
    });
    field(card, "requests").title = byStatus.join("  ");

    const errors = rate(recent, latest, read("errors"));
    const throttled = rate(recent, latest, read("throttled"));
    const rejected = rate(recent, latest, read("rejected"));
    setText(card, "errors", formatRate(errors), errors > 0 ? "bad" : "");
    setText(card, "throttled", formatRate(throttled), throttled > 0 ? "warn" : "");
    setText(card, "rejected", formatRate(rejected), rejected > 0 ? "warn" : "");
    setText(card, "deadLetters", formatCount(now.deadLetters), now.deadLetters > 0 ? "warn" : "");
    setText(card, "lost", formatCount(now.lost), now.lost > 0 ? "bad" : "");
    if (errors > 0) problems.warn.push(`${name} delivery errors`);
    if (throttled > 0) problems.warn.push(`${name} throttled`);
    if (rejected > 0) problems.warn.push(`${name} buffer refusing`);
    if (recent && now.lost > recent.services[name].lost) problems.bad.push(`${name} losing events`);

    const fill = now.bufferFill;
    const bar = field(card, "buffer-bar");
    const tone = fill === null ? "" : fill >= 0.8 ? "bad" : fill >= 0.5 ? "warn" : "";
    bar.style.width = `${fill === null ? 0 : Math.min(100, fill * 100).toFixed(1)}%`;
    bar.classList.toggle("bad", tone === "bad");
    bar.classList.toggle("warn", tone === "warn");
    setText(
      card,
      "buffer",
      fill === null ? DASH : `${oneDecimal.format(fill * 100)} % \u00b7 ${formatCount(now.bufferEvents)} events`,
    );
    if (fill !== null && fill >= 0.8) problems.warn.push(`${name} buffer ${number.format(fill * 100)} % full`);

    const spool = now.spool;
    field(card, "spool-row").hidden = !spool;
    if (spool) {
      const parts = [`${formatCount(spool.events)} events`, `${formatCount(spool.bytes)} B`, `oldest ${formatAge(spool.oldestAge)}`];
      if (spool.quarantined > 0) parts.push(`${formatCount(spool.quarantined)} quarantined`);
      if (spool.dropped > 0) parts.push(`${formatCount(spool.dropped)} dropped`);
      setText(card, "spool", parts.join(" \u00b7 "), spool.writeErrors > 0 || spool.quarantined > 0 ? "bad" : spool.dropped > 0 ? "warn" : "");
      if (spool.quarantined > 0) problems.bad.push(`${name} spool quarantined events`);
      if (spool.dropped > 0) problems.warn.push(`${name} spool dropped events`);
      if (recent && recent.services[name].spool && spool.writeErrors > recent.services[name].spool.writeErrors) {
        problems.bad.push(`${name} spool cannot write`);
      }
    }

    const badge = field(card, "breaker");
    if (name === "transaction") {
      const relay = latest.outbox.relay;
      badge.title = "outbox relay";
      setBadge(badge, relay ? `relay ${relay}` : "no outbox", relay === "failing" ? "bad" : relay === "leading" ? "good" : "unknown");
    } else if (now.breaker === null) {
      setBadge(badge, "not in this process", "unknown");
    } else {
      const tones = { closed: "good", "half-open": "warn", open: "bad" };
      setBadge(badge, now.breaker, tones[now.breaker] || "unknown");
      if (now.breaker === "open") problems.bad.push(`${name} breaker open`);
      if (now.breaker === "half-open") problems.warn.push(`${name} breaker half-open`);
    }
  }

  function renderOutbox(latest, recent, problems) {
    const card = document.getElementById("outbox");
    const outbox = latest.outbox;
    setText(card, "pending", formatCount(outbox.pending));
    setText(card, "oldest", formatAge(outbox.oldestAge), outbox.oldestAge > 60 ? "warn" : "");
    setText(card, "published", formatRate(rate(recent, latest, (snap) => snap.outbox.published)));
    setText(card, "failures", formatCount(outbox.failures), outbox.failures > 0 ? "warn" : "");
    const relay = outbox.relay;
    setBadge(field(card, "relay"), relay || "not in this process", relay === "failing" ? "bad" : relay === "leading" ? "good" : "unknown");
    if (relay === "failing") problems.bad.push("outbox relay failing");
    if (outbox.oldestAge > 60) problems.warn.push("outbox lagging");
  }

  // A group whose oldest unconsumed record has waited this long degrades the page.
  const CONSUMER_WAIT_WARN_S = 60;

  function renderConsumers(latest, slow, problems) {
    const card = document.getElementById("consumers");
    const consumers = latest.consumers || [];
    const rows = field(card, "consumer-rows");
    rows.replaceChildren();
    for (const consumer of consumers) {
      const row = document.createElement("tr");
      row.dataset.group = consumer.group;
      row.dataset.topic = consumer.topic;
      const same = (c) => c.group === consumer.group && c.topic === consumer.topic;
      const before = slow && (slow.consumers || []).find(same);
      const change = before ? consumer.lag - before.lag : null;
      const waited = consumer.oldestAge;
      let trend = DASH;
      if (change > 0) trend = `\u2191 ${formatCount(change)}`;
      else if (change < 0) trend = `\u2193 ${formatCount(-change)}`;
      else if (change === 0) trend = "=";
      const cells = [
        ["group", consumer.group, ""],
        ["topic", consumer.topic, ""],
        ["lag", formatCount(consumer.lag), consumer.lag > 0 ? "warn" : ""],
        ["oldest", waited === null ? DASH : formatAge(waited), waited > CONSUMER_WAIT_WARN_S ? "bad" : ""],
        ["trend", trend, change > 0 ? "warn" : ""],
      ];
      for (const [name, text, tone] of cells) {
        const cell = document.createElement("td");
        cell.dataset.field = `consumer-${name}`;
        cell.textContent = text;
        if (tone) cell.classList.add(tone);
        row.appendChild(cell);
      }
      rows.appendChild(row);
      if (waited > CONSUMER_WAIT_WARN_S) problems.warn.push(`${consumer.group} behind on ${consumer.topic}`);
    }
    field(card, "consumer-empty").hidden = consumers.length > 0;
    const groups = new Set(consumers.map((c) => c.group)).size;
    setBadge(field(card, "consumer-count"), `${groups} group${groups === 1 ? "" : "s"}`, groups ? "good" : "unknown");
  }

  function renderProcess(latest, recent) {
    const card = document.getElementById("process");
    const cpu = rate(recent, latest, (snap) => snap.process.cpuSeconds);
    setText(card, "cpu", cpu === null ? DASH : `${oneDecimal.format(cpu * 100)} %`);
    setText(card, "rss", formatBytes(latest.process.rss));
    const started = latest.process.startTime;
    setText(card, "uptime", started ? formatAge(latest.time - started) : DASH);
  }

  function render() {
    const latest = history[history.length - 1];
    const recent = baseline(RATE_WINDOW_S);
    const slow = baseline(LATENCY_WINDOW_S);
    const problems = { bad: [], warn: [] };
    for (const name of SERVICES) renderService(name, latest, recent, slow, problems);
    renderOutbox(latest, recent, problems);
    renderConsumers(latest, slow, problems);
    renderProcess(latest, recent);

    const overall = document.getElementById("overall");
    if (problems.bad.length) setBadge(overall, `unhealthy: ${problems.bad.join(", ")}`, "bad");
    else if (problems.warn.length) setBadge(overall, `degraded: ${problems.warn.join(", ")}`, "warn");
    else setBadge(overall, "healthy", "good");
    document.getElementById("updated").textContent = new Date(latest.time * 1000).toLocaleTimeString();
  }

  function renderUnreachable(error) {
    const overall = document.getElementById("overall");
    if (failures >= 3 || history.length === 0) setBadge(overall, `unreachable: ${error.message}`, "bad");
  }

  async function poll() {
    try {
      const response = await fetch("status.json", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const snap = await response.json();
      // Another process answered (a restart, or another copy under --workers): its counters start elsewhere.
      if (history.length && history[history.length - 1].pid !== snap.pid) history.length = 0;
      history.push(snap);
      while (history.length > 2 && snap.time - history[0].time > KEEP_S) history.shift();
      failures = 0;
      render();
    } catch (error) {
      failures += 1;
      renderUnreachable(error);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  // The arithmetic, for tests/status to check in the browser.
  globalThis.gatewayStatus = { percentile, rate, formatRate, formatSeconds, formatAge, formatBytes };

  const template = document.getElementById("service-card");
  if (!template) return; // loaded without the page
  for (const name of SERVICES) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.service = name;
    field(card, "title").textContent = name;
    if (name === "transaction") field(card, "send-label").textContent = "commit";
    template.parentNode.appendChild(card);
  }
  poll();
})();
