// KnowledgeHub Realtime live console. Plain ES2017, no dependencies, no build
// step. Every URL is relative, so the console works behind a path prefix too.
(function () {
  'use strict';

  var DEFAULT_TYPES = ['CODE_CHANGE', 'MEMORY_CREATED', 'DECISION_MADE', 'ERROR_OCCURRED', 'PATTERN_DETECTED'];
  var STATS_URL = 'api/realtime/stats';
  var STREAM_URL = 'api/realtime/stream';
  var PUBLISH_URL = 'api/realtime/events';
  var KEY_STORAGE = 'knowledgehub.publishKey';
  var MAX_ROWS = 500; // rows kept in the DOM, and events kept while paused
  var DATA_PREVIEW = 160; // characters of data shown in a row
  var JOB_ID = /^[A-Za-z0-9._:-]{1,128}$/;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function pad(n, w) { n = String(n); while (n.length < (w || 2)) n = '0' + n; return n; }
  function clock(d) {
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' + pad(d.getMilliseconds(), 3);
  }
  function storageGet(k) { try { return window.localStorage.getItem(k) || ''; } catch (e) { return ''; } }
  function storageSet(k, v) { try { window.localStorage.setItem(k, v); } catch (e) { /* private mode */ } }

  // ---- Connection counts -------------------------------------------------

  var statsStatus = $('stats-status');
  var statFields = {
    'conn-total': ['connections', 'total'],
    'conn-websocket': ['connections', 'websocket'],
    'conn-sse': ['connections', 'sse'],
    'conn-auth': ['connections', 'authenticated'],
    'conn-anon': ['connections', 'anonymous'],
    'events-accepted': ['events', 'accepted'],
    'events-delivered': ['events', 'delivered']
  };

  function uptime(s) {
    s = Math.floor(s || 0);
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) return d + 'd ' + h + 'h';
    if (h) return h + 'h ' + m + 'm';
    if (m) return m + 'm ' + (s % 60) + 's';
    return s + 's';
  }

  function showStats(st) {
    Object.keys(statFields).forEach(function (id) {
      var f = statFields[id], v = st[f[0]] && st[f[0]][f[1]];
      // Plain digits, so that scripts and browser tests can parse them.
      $(id).textContent = typeof v === 'number' ? String(v) : '–';
    });
    $('uptime').textContent = uptime(st.uptime_seconds);
    // Types configured on the server, so a filter never hides one unseen.
    (st.event_types || []).forEach(addType);
    statsStatus.textContent = 'stats: live';
    statsStatus.className = 'pill ok';
  }

  function pollStats() {
    var ctl = window.AbortController ? new AbortController() : null;
    var timer = setTimeout(function () { if (ctl) ctl.abort(); }, 4000);
    fetch(STATS_URL, { cache: 'no-store', signal: ctl ? ctl.signal : undefined })
      .then(function (res) {
        if (!res.ok) throw new Error('HTTP ' + res.status);
        return res.json();
      })
      .then(showStats, function (err) {
        statsStatus.textContent = 'stats: ' + (err.name === 'AbortError' ? 'timeout' : err.message);
        statsStatus.className = 'pill bad';
      })
      .then(function () {
        clearTimeout(timer);
        setTimeout(pollStats, 1000);
      });
  }

  // ---- Event types: filter checkboxes and the publish select ---------------

  var types = [];
  var typeBox = $('filter-types');
  var typeSelect = $('publish-type');

  function addType(name) {
    if (typeof name !== 'string' || !/^[A-Z][A-Z0-9_]*$/.test(name) || types.indexOf(name) >= 0) return;
    types.push(name);
    var label = el('label');
    var cb = el('input');
    cb.type = 'checkbox';
    cb.checked = true;
    cb.value = name;
    cb.id = 'filter-type-' + name;
    cb.addEventListener('change', scheduleReconnect);
    label.appendChild(cb);
    label.appendChild(document.createTextNode(name));
    typeBox.appendChild(label);
    var opt = el('option', '', name);
    opt.value = name;
    typeSelect.appendChild(opt);
  }

  // ---- Live stream ---------------------------------------------------------

  var es = null;
  var streamStatus = $('stream-status');
  var toggle = $('stream-toggle');
  var reconnectTimer = 0;

  function setStatus(text, state) {
    streamStatus.textContent = text;
    streamStatus.className = 'pill ' + ({ open: 'ok', connecting: 'warn', closed: 'bad' }[state] || '');
    streamStatus.setAttribute('data-state', state);
    toggle.textContent = state === 'closed' || state === 'idle' ? 'Connect' : 'Disconnect';
  }

  // streamQuery returns the query string for the current filters, or throws
  // an Error naming what is wrong with them.
  function streamQuery() {
    var q = [];
    var token = $('stream-token').value.trim();
    if (token) q.push('token=' + encodeURIComponent(token));
    var checked = [];
    typeBox.querySelectorAll('input[type=checkbox]').forEach(function (cb) { if (cb.checked) checked.push(cb.value); });
    if (checked.length === 0) throw new Error('no event type selected');
    if (checked.length < types.length) q.push('event_types=' + encodeURIComponent(checked.join(',')));
    var jobs = $('filter-job').value.split(',').map(function (s) { return s.trim(); }).filter(Boolean);
    jobs.forEach(function (j) {
      if (!JOB_ID.test(j)) throw new Error('bad job id "' + j + '": use [A-Za-z0-9._:-], at most 128');
    });
    if (jobs.length) q.push('job_ids=' + encodeURIComponent(jobs.join(',')));
    return q.length ? '?' + q.join('&') : '';
  }

  function disconnect(text) {
    clearTimeout(reconnectTimer);
    if (es) { es.close(); es = null; }
    setStatus(text || 'disconnected', 'closed');
  }

  function connect() {
    var url;
    try {
      url = STREAM_URL + streamQuery();
    } catch (err) {
      disconnect('not connected: ' + err.message);
      return;
    }
    disconnect();
    if (!window.EventSource) { setStatus('this browser has no EventSource', 'closed'); return; }
    var src = new EventSource(url);
    es = src;
    setStatus('connecting…', 'connecting');
    src.onopen = function () { if (es === src) setStatus('open', 'open'); };
    src.onmessage = function (e) {
      var ev;
      try { ev = JSON.parse(e.data); } catch (err) { return; }
      if (ev && typeof ev === 'object') receive(ev);
    };
    src.addEventListener('connected', function (e) {
      var m = parse(e.data);
      setStatus(m.authenticated ? 'live · user ' + m.user_id : 'live · anonymous', 'open');
    });
    src.addEventListener('gap', function (e) {
      var m = parse(e.data);
      notice('gap: events after ' + (m.last_event_id || '?') + ' are no longer retained; replay starts at ' +
        (m.oldest_available_id || '?'));
    });
    src.addEventListener('token_expired', function () {
      if (es === src) disconnect('token expired: enter a new token and reconnect');
      notice('token expired: the server ended the stream');
    });
    src.onerror = function () {
      if (es !== src) return;
      if (src.readyState === EventSource.CLOSED) {
        es = null;
        setStatus('closed', 'closed');
        diagnose(url);
      } else {
        setStatus('reconnecting…', 'connecting');
      }
    };
  }

  function parse(s) { try { return JSON.parse(s) || {}; } catch (e) { return {}; } }

  // diagnose asks the stream URL once more with fetch, which, unlike
  // EventSource, can read the JSON error of a refused stream.
  function diagnose(url) {
    if (!window.AbortController) return;
    var ctl = new AbortController();
    fetch(url, { headers: { Accept: 'text/event-stream' }, cache: 'no-store', signal: ctl.signal })
      .then(function (res) {
        if (res.ok) { ctl.abort(); return; }
        return res.text().then(function (t) {
          var j = parse(t);
          if (es) return;
          setStatus('closed: ' + res.status + (j.error ? ' ' + j.error : '') + (j.message ? ': ' + j.message : ''), 'closed');
        });
      })
      .catch(function () { /* aborted or unreachable: keep "closed" */ });
  }

  function scheduleReconnect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(connect, 300);
  }

  // ---- Event list ----------------------------------------------------------

  var list = $('event-list');
  var empty = $('event-empty');
  var pauseBtn = $('pause');
  var pauseInfo = $('pause-info');
  var paused = false;
  var buffered = []; // newest last, at most MAX_ROWS
  var bufferedCount = 0;
  var pending = []; // received, not yet rendered (batched)
  var flushTimer = 0;

  function receive(ev) {
    countRate();
    if (typeof ev.type === 'string') addType(ev.type);
    if (paused) {
      buffered.push(ev);
      if (buffered.length > MAX_ROWS) buffered.shift();
      bufferedCount++;
      pauseInfo.textContent = bufferedCount + ' buffered';
      return;
    }
    pending.push(ev);
    if (pending.length > MAX_ROWS) pending.shift();
    if (!flushTimer) flushTimer = setTimeout(flush, 30);
  }

  function flush() {
    flushTimer = 0;
    if (!pending.length) return;
    var frag = document.createDocumentFragment();
    for (var i = pending.length - 1; i >= 0; i--) frag.appendChild(row(pending[i]));
    pending = [];
    list.insertBefore(frag, list.firstChild);
    trim();
  }

  function trim() {
    while (list.childElementCount > MAX_ROWS) list.removeChild(list.lastElementChild);
    empty.hidden = list.childElementCount > 0;
  }

  function str(v) { return v === undefined || v === null ? '' : String(v); }

  function row(ev) {
    var r = el('div', 'event-row fresh');
    r.setAttribute('data-id', str(ev.id));
    r.setAttribute('data-type', str(ev.type));
    var ts = ev.timestamp ? new Date(ev.timestamp) : new Date();
    if (isNaN(ts.getTime())) ts = new Date();
    var data = JSON.stringify(ev.data === undefined ? null : ev.data);
    r.appendChild(el('span', 'time', clock(ts))).title = str(ev.timestamp);
    r.appendChild(el('span', 'id', str(ev.id))).title = str(ev.id);
    r.appendChild(el('span', 'type ' + str(ev.type), str(ev.type)));
    r.appendChild(el('span', 'job', str(ev.job_id))).title = str(ev.job_id);
    var u = r.appendChild(el('span', ev.user_id ? 'user private' : 'user', str(ev.user_id)));
    if (ev.user_id) u.title = 'private to ' + ev.user_id;
    var d = r.appendChild(el('span', 'data', data.length > DATA_PREVIEW ? data.slice(0, DATA_PREVIEW) + '…' : data));
    d.title = data.length > 2000 ? data.slice(0, 2000) + '…' : data;
    r.addEventListener('click', function () {
      var open = r.classList.toggle('open');
      d.textContent = open ? JSON.stringify(ev.data, null, 2) : (data.length > DATA_PREVIEW ? data.slice(0, DATA_PREVIEW) + '…' : data);
    });
    return r;
  }

  function notice(text) {
    var n = el('div', 'notice', clock(new Date()) + '  ' + text);
    list.insertBefore(n, list.firstChild);
    trim();
  }

  function setPaused(p) {
    paused = p;
    pauseBtn.textContent = p ? 'Resume' : 'Pause';
    pauseBtn.setAttribute('aria-pressed', String(p));
    if (p) {
      pauseInfo.textContent = '0 buffered';
      return;
    }
    pending = pending.concat(buffered).slice(-MAX_ROWS);
    buffered = [];
    bufferedCount = 0;
    pauseInfo.textContent = '';
    flush();
  }

  // ---- Events per second chart ---------------------------------------------

  var chart = $('rate-chart');
  var rateNow = $('rate-now');
  var counts = new Array(60).fill(0); // ring buffer indexed by second % 60
  var lastSec = Math.floor(Date.now() / 1000);
  var firstSec = lastSec;

  function advance(sec) {
    if (sec - lastSec >= 60) counts.fill(0);
    else for (var s = lastSec + 1; s <= sec; s++) counts[s % 60] = 0;
    if (sec > lastSec) lastSec = sec;
  }

  function countRate() {
    var sec = Math.floor(Date.now() / 1000);
    advance(sec);
    counts[sec % 60]++;
  }

  function niceMax(v) {
    if (v <= 5) return 5;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  function drawChart() {
    var sec = Math.floor(Date.now() / 1000);
    advance(sec);
    var vals = [], max = 0, total = 0;
    for (var i = 0; i < 60; i++) {
      var v = counts[(sec - 59 + i) % 60];
      vals.push(v);
      if (v > max) max = v;
      if (i < 59) total += v;
    }
    var span = Math.min(59, Math.max(1, sec - firstSec));
    rateNow.textContent = vals[58] + '/s last second · ' + (total / span).toFixed(1) + '/s average';

    var w = chart.clientWidth, h = chart.clientHeight;
    if (!w || !h || !chart.getContext) return;
    var dpr = window.devicePixelRatio || 1;
    if (chart.width !== Math.round(w * dpr) || chart.height !== Math.round(h * dpr)) {
      chart.width = Math.round(w * dpr);
      chart.height = Math.round(h * dpr);
    }
    var ctx = chart.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var css = getComputedStyle(document.documentElement);
    var accent = css.getPropertyValue('--accent').trim() || '#2f6fde';
    var muted = css.getPropertyValue('--muted').trim() || '#888';
    var line = css.getPropertyValue('--line').trim() || '#ddd';
    var left = 36, right = 6, top = 8, bottom = 16;
    var pw = w - left - right, ph = h - top - bottom;
    var ymax = niceMax(max);

    ctx.font = '10px system-ui, sans-serif';
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'right';
    ctx.lineWidth = 1;
    [0, 0.5, 1].forEach(function (f) {
      var y = Math.round(top + ph - f * ph) + 0.5;
      ctx.strokeStyle = line;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w - right, y); ctx.stroke();
      ctx.fillStyle = muted;
      ctx.fillText(String(Math.round(ymax * f * 10) / 10), left - 4, y);
    });
    ctx.textAlign = 'center';
    ctx.textBaseline = 'alphabetic';
    ctx.fillText('-60s', left + 12, h - 3);
    ctx.fillText('-30s', left + pw / 2, h - 3);
    ctx.fillText('now', w - right - 10, h - 3);

    var bw = pw / 60;
    ctx.fillStyle = accent;
    for (var j = 0; j < 60; j++) {
      if (!vals[j]) continue;
      var bh = Math.max(1, vals[j] / ymax * ph);
      ctx.globalAlpha = j === 59 ? 0.45 : 0.85; // the current second is partial
      ctx.fillRect(left + j * bw + 0.5, top + ph - bh, Math.max(1, bw - 1), bh);
    }
    ctx.globalAlpha = 1;
  }

  // ---- Publish form --------------------------------------------------------

  var result = $('publish-result');

  function showResult(ok, text, attrs) {
    result.textContent = text;
    result.className = 'result ' + (ok ? 'ok' : 'bad');
    result.removeAttribute('data-id');
    result.removeAttribute('data-status');
    Object.keys(attrs || {}).forEach(function (k) { result.setAttribute(k, attrs[k]); });
  }

  function publish(e) {
    e.preventDefault();
    var key = $('publish-key').value.trim();
    storageSet(KEY_STORAGE, key);
    var data;
    try {
      data = JSON.parse($('publish-data').value);
    } catch (err) {
      showResult(false, 'data is not valid JSON: ' + err.message);
      return;
    }
    var body = { type: typeSelect.value, data: data };
    var user = $('publish-user').value.trim(), job = $('publish-job').value.trim();
    if (user) body.user_id = user;
    if (job) body.job_id = job;
    var btn = $('publish-submit');
    btn.disabled = true;
    fetch(PUBLISH_URL, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + key },
      body: JSON.stringify(body)
    }).then(function (res) {
      return res.text().then(function (t) {
        var j = parse(t);
        if (res.status === 201) {
          showResult(true, '201 Created · id ' + j.id, { 'data-status': '201', 'data-id': str(j.id) });
        } else {
          showResult(false, res.status + ' ' + (j.error || res.statusText) + (j.message ? ': ' + j.message : t && !j.error ? ': ' + t.slice(0, 300) : ''),
            { 'data-status': String(res.status) });
        }
      });
    }, function (err) {
      showResult(false, 'request failed: ' + err.message, { 'data-status': '0' });
    }).then(function () { btn.disabled = false; });
  }

  // ---- Wiring --------------------------------------------------------------

  DEFAULT_TYPES.forEach(addType);
  $('publish-key').value = storageGet(KEY_STORAGE);
  $('publish-key').addEventListener('change', function () { storageSet(KEY_STORAGE, this.value.trim()); });
  $('publish-form').addEventListener('submit', publish);
  $('stream-form').addEventListener('submit', function (e) { e.preventDefault(); connect(); });
  $('filter-job').addEventListener('change', scheduleReconnect);
  toggle.addEventListener('click', function () { if (es) disconnect(); else connect(); });
  pauseBtn.addEventListener('click', function () { setPaused(!paused); });
  $('clear').addEventListener('click', function () {
    while (list.firstChild) list.removeChild(list.firstChild);
    trim();
  });
  window.addEventListener('resize', drawChart);
  setStatus('idle', 'idle');
  trim();
  connect();
  pollStats();
  drawChart();
  setInterval(drawChart, 1000);
})();
