// The outbox-relay console: reads the JSON API of its own origin and
// writes every value it shows as text (textContent, text nodes), never as
// markup: payloads, headers, names and errors are data. The search lives
// in the URL (`/?message_id=...`, the API's filter names): a link to it
// opens the page with that search done, each search is a history entry,
// and a message's link is the search for its message_id.
'use strict';

(function () {
  const REFRESH_MS = 5000;
  const DEAD_SHOWN = 20;
  const { $, admitted, api, apiOk, el, svg, setText, notice, pad, when, timeCell, count, age, route, stateBadge } =
    window.OutboxConsole;

  // ---- the overview -----------------------------------------------------

  function showStats(stats) {
    setText('pending-due', count(stats.pending.due));
    setText('pending-delayed', count(stats.pending.delayed));
    setText('oldest-age', stats.pending.total > 0 ? age(stats.pending.oldest_age_seconds) : '–');
    setText('sent-hour', count(stats.rates.sent_last_hour));
    setText('sent-minute', count(stats.rates.sent_last_minute) + ' in the last minute');
    setText('dead-count', count(stats.dead));
    $('dead-count').parentElement.classList.toggle('alert', stats.dead > 0);
    const blocked = stats.ordering || { keys: 0, oldest_seconds: 0 };
    setText('keys-blocked', count(blocked.keys));
    setText('keys-blocked-since', blocked.keys > 0 ? 'oldest head ' + age(blocked.oldest_seconds) + ' old' : '');
    $('keys-blocked').parentElement.classList.toggle('alert', blocked.keys > 0);
    drawChart(stats.rates.sent_per_minute || []);
    const rows = stats.top_pending.map((r) =>
      el('tr', {},
        el('td', { text: r.exchange === '' ? '(default)' : r.exchange }),
        el('td', { text: r.routing_key }),
        el('td', { class: 'num', text: count(r.count) })));
    $('routes').tBodies[0].replaceChildren(...rows);
    $('routes-empty').hidden = rows.length > 0;
  }

  // Bars of the per-minute series (oldest first), scaled to its maximum,
  // drawn in the chart's own CSS pixels so that its labels keep their size
  // from a phone to a desktop.
  let lastSeries = [];
  function drawChart(perMinute) {
    lastSeries = perMinute;
    const chart = $('chart');
    const width = Math.max(240, Math.round(chart.clientWidth || 640));
    const height = 150, left = 44, right = 6, top = 10, bottom = 22;
    chart.setAttribute('viewBox', '0 0 ' + width + ' ' + height);
    const plotW = width - left - right, plotH = height - top - bottom;
    const max = niceCeiling(Math.max(1, ...perMinute));
    const step = plotW / Math.max(1, perMinute.length);
    const nodes = [];
    for (const frac of max >= 2 ? [0, 0.5, 1] : [0, 1]) {
      const y = top + plotH * (1 - frac);
      nodes.push(svg('line', { class: 'axis', x1: left, x2: width - right, y1: y, y2: y }));
      nodes.push(svg('text', { class: 'tick', x: left - 6, y: y + 4, 'text-anchor': 'end' },
        count(Math.round(max * frac))));
    }
    perMinute.forEach((n, i) => {
      if (n <= 0) return;
      const h = Math.max(1, plotH * n / max);
      const ago = perMinute.length - 1 - i;
      const bar = svg('rect', {
        class: 'bar-rect', x: left + i * step + 1, y: top + plotH - h,
        width: Math.max(1, step - 2), height: h, 'data-minute': i, 'data-count': n,
      });
      bar.append(svg('title', {}, count(n) + ' sent ' + (ago === 0 ? 'in the last minute' : ago + ' to ' + (ago + 1) + ' min ago')));
      nodes.push(bar);
    });
    for (const [i, label, anchor] of [[0, '60 min ago', 'start'], [perMinute.length / 2, '30 min', 'middle'], [perMinute.length, 'now', 'end']]) {
      nodes.push(svg('text', { class: 'tick', x: left + i * step, y: height - 6, 'text-anchor': anchor }, label));
    }
    chart.replaceChildren(...nodes);
  }

  // The smallest of 1, 2, 5 times a power of ten at or above n: the
  // chart's top, so that its middle line is a whole number too.
  function niceCeiling(n) {
    const power = Math.pow(10, Math.floor(Math.log10(n)));
    for (const m of [1, 2, 5, 10]) {
      if (m * power >= n) return m * power;
    }
    return 10 * power;
  }

  function showHealth(reply) {
    const pill = $('health');
    const body = reply.body || {};
    if (reply.ok && body.status === 'ok') {
      pill.textContent = 'healthy';
      pill.className = 'pill ok';
      pill.title = '';
      return;
    }
    const failing = Object.entries(body.checks || {})
      .filter(([, check]) => !check.ok)
      .map(([name, check]) => name + (check.error ? ': ' + check.error : ''));
    pill.textContent = failing.length ? 'failing: ' + failing.map((f) => f.split(':')[0]).join(', ') : 'failing';
    pill.className = 'pill bad';
    pill.title = failing.join('\n');
  }

  function showDead(page) {
    const rows = page.items.map((row) =>
      el('tr', { 'data-id': row.id, 'data-message-id': row.message_id },
        timeCell(row.dead_at),
        el('td', {}, messageLink(row)),
        el('td', { class: 'route', text: route(row) }),
        el('td', { class: 'num', text: String(row.attempts) }),
        el('td', { class: 'error', text: row.last_error || '' }),
        el('td', {}, el('button', { type: 'button', class: 'replay', text: 'Replay', onclick: (e) => replay(row, e.target) }))));
    $('dead').tBodies[0].replaceChildren(...rows);
    $('dead-empty').hidden = rows.length > 0;
    setText('dead-note', page.next_cursor ? '(the ' + DEAD_SHOWN + ' newest)' : '');
  }

  let refreshing = false;
  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    try {
      const [stats, health, dead] = await Promise.all([
        apiOk('GET', '/api/stats'),
        api('GET', '/api/health'),
        apiOk('GET', '/api/messages?state=dead&limit=' + DEAD_SHOWN),
      ]);
      showStats(stats);
      showHealth(health);
      showDead(dead);
      setText('updated', 'updated ' + when(new Date().toISOString()));
    } catch (e) {
      if (e.status !== 401) notice('Refresh failed: ' + e.message, true);
    } finally {
      refreshing = false;
    }
  }

  // ---- writes -------------------------------------------------------------

  async function replay(row, button) {
    if (button) button.disabled = true;
    try {
      await apiOk('POST', '/api/messages/' + encodeURIComponent(row.id) + '/replay');
      notice('Message ' + row.message_id + ' is pending again: the relay sends it next.', false);
      if ($('detail').open) $('detail').close();
      await refresh();
    } catch (e) {
      notice('Replay of ' + row.message_id + ' failed: ' + e.message, true);
      if (button) button.disabled = false;
    }
  }

  // ---- search -------------------------------------------------------------

  const FILTERS = ['message_id', 'routing_key', 'exchange', 'state'];
  const TIMES = ['since', 'until'];
  let cursor = null;
  let query = '';

  // The link to the search for one message: opened here, it shows the
  // message's detail; opened anew (another tab, a bookmark, a colleague),
  // the page with that search done.
  function messageLink(row) {
    const href = '/?' + new URLSearchParams({ message_id: row.message_id }).toString();
    return el('a', {
      class: 'link', href, text: row.message_id,
      onclick: (e) => {
        if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
        e.preventDefault();
        openDetail(row.id);
      },
    });
  }

  // An RFC 3339 time as a datetime-local input's value, in local time.
  function localInput(value) {
    const date = new Date(value);
    if (Number.isNaN(date.getTime())) return '';
    return date.getFullYear() + '-' + pad(date.getMonth() + 1) + '-' + pad(date.getDate()) + 'T' +
      pad(date.getHours()) + ':' + pad(date.getMinutes()) + ':' + pad(date.getSeconds());
  }

  // The search of the page's URL (its filters only), or null without one.
  function urlQuery() {
    const given = new URLSearchParams(window.location.search);
    const params = new URLSearchParams();
    for (const name of FILTERS.concat(TIMES)) {
      const value = given.get(name);
      if (value) params.set(name, value);
    }
    return params.toString() ? params : null;
  }

  // Shows `params` in the form, as if the user had typed it.
  function fillForm(params) {
    for (const name of FILTERS) $('f-' + name).value = params.get(name) || '';
    for (const name of TIMES) $('f-' + name).value = params.get(name) ? localInput(params.get(name)) : '';
  }

  function clearResults() {
    $('results').tBodies[0].replaceChildren();
    $('more').hidden = true;
    setText('results-note', '');
  }

  // A new history entry for the search `params` (none when the URL
  // already is it: a reload or a repeated search adds nothing).
  function remember(params) {
    const url = params.toString() ? '/?' + params.toString() : '/';
    if (url !== window.location.pathname + window.location.search) {
      window.history.pushState(null, '', url);
    }
  }

  // The form as the list's query; local times become RFC 3339 UTC.
  function searchQuery() {
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const value = $('f-' + name).value.trim();
      if (value) params.set(name, value);
    }
    for (const name of TIMES) {
      const value = $('f-' + name).value;
      if (value) params.set(name, new Date(value).toISOString());
    }
    return params;
  }

  function resultRow(row) {
    return el('tr', { 'data-id': row.id, 'data-message-id': row.message_id },
      el('td', { class: 'num', text: String(row.id) }),
      el('td', {}, messageLink(row)),
      el('td', {}, stateBadge(row.state)),
      el('td', { class: 'route', text: route(row) }),
      timeCell(row.created_at, 'created'),
      timeCell(row.sent_at, 'sent'),
      timeCell(row.dead_at, 'dead'),
      el('td', { class: 'num', text: String(row.attempts) }));
  }

  // The first page of `given` (the form's query when not given), or the
  // next page of the current search (`more`).
  async function search(more, given) {
    if (!more) {
      query = (given || searchQuery()).toString();
      cursor = null;
    }
    const params = new URLSearchParams(query);
    params.set('limit', '50');
    if (more && cursor) params.set('cursor', cursor);
    $('search-button').disabled = true;
    try {
      const page = await apiOk('GET', '/api/messages?' + params.toString());
      const rows = page.items.map(resultRow);
      const body = $('results').tBodies[0];
      if (more) body.append(...rows);
      else body.replaceChildren(...rows);
      cursor = page.next_cursor;
      $('more').hidden = !cursor;
      const shown = body.rows.length;
      setText('results-note', shown === 0 ? 'No message matches.' : shown + (cursor ? '+' : '') + ' message' + (shown === 1 ? '' : 's') + ', newest first.');
      notice('', false);
    } catch (e) {
      notice('Search failed: ' + e.message, true);
    } finally {
      $('search-button').disabled = false;
    }
  }

  // ---- one message --------------------------------------------------------

  async function openDetail(id) {
    let row;
    try {
      row = await apiOk('GET', '/api/messages/' + encodeURIComponent(id));
    } catch (e) {
      notice('Message ' + id + ': ' + e.message, true);
      return;
    }
    setText('detail-title', 'Message ' + row.id);
    const fields = [
      ['message_id', row.message_id], ['state', row.state],
      ['exchange', row.exchange === '' ? '(default)' : row.exchange], ['routing key', row.routing_key],
      ['destination', row.destination || 'amqp'],
      ['content type', row.content_type || ''], ['size', count(row.size) + ' bytes'],
      ['attempts', String(row.attempts)], ['last error', row.last_error || ''],
      ['created', when(row.created_at)], ['available', when(row.available_at)],
      ['sent', when(row.sent_at)], ['dead', when(row.dead_at)],
    ];
    $('detail-fields').replaceChildren(...fields.flatMap(([name, value]) =>
      [el('dt', { text: name }), el('dd', { text: value || '–' })]));
    setText('detail-headers', JSON.stringify(row.headers, null, 2));
    setText('detail-payload', prettyPayload(row));
    setText('detail-payload-note', row.payload_encoding === 'base64'
      ? '(binary, base64' + (row.payload_truncated ? ', first 64 KiB of ' + count(row.size) + ' bytes' : '') + ')'
      : '');
    const button = $('detail-replay');
    button.hidden = row.state !== 'dead';
    button.disabled = false;
    button.onclick = () => replay(row, button);
    $('detail').showModal();
  }

  // JSON payloads indented; everything else as it came.
  function prettyPayload(row) {
    if (row.payload_encoding === 'text' && /json/i.test(row.content_type || '')) {
      try {
        return JSON.stringify(JSON.parse(row.payload), null, 2);
      } catch (_) {
        return row.payload;
      }
    }
    return row.payload;
  }

  // ---- wiring ---------------------------------------------------------------

  async function logout() {
    try {
      await apiOk('POST', '/logout');
    } finally {
      window.location.assign('/login');
    }
  }

  $('search').addEventListener('submit', (e) => {
    e.preventDefault();
    const params = searchQuery();
    remember(params);
    search(false, params);
  });
  $('search').addEventListener('reset', () => {
    clearResults();
    remember(new URLSearchParams());
  });
  // Back and forward: the search of that history entry, done again.
  window.addEventListener('popstate', () => {
    const params = urlQuery();
    fillForm(params || new URLSearchParams());
    if (params) search(false, params);
    else clearResults();
  });
  $('more').addEventListener('click', () => search(true));
  window.addEventListener('resize', () => drawChart(lastSeries));
  $('detail-close').addEventListener('click', () => $('detail').close());
  $('logout').hidden = admitted !== 'token';
  $('logout').addEventListener('click', logout);

  refresh();
  const linked = urlQuery();
  if (linked) {
    fillForm(linked);
    search(false, linked);
  }
  setInterval(() => {
    if (!document.hidden) refresh();
  }, REFRESH_MS);
}());
