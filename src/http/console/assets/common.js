// What the console's page script (console.js) builds with: the JSON API
// of the page's own origin (with the session's CSRF token on writes) and
// elements whose every value is text (textContent, text nodes), never
// markup. Loaded before console.js, as window.OutboxConsole.
'use strict';

window.OutboxConsole = (function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const admitted = document.body.dataset.admitted;
  const $ = (id) => document.getElementById(id);

  // ---- the API --------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // One API call; writes carry the session's CSRF token. 401 with a
  // session means it ended: back to the login.
  async function api(method, path) {
    const headers = { Accept: 'application/json' };
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (method !== 'GET') {
      headers['Content-Type'] = 'application/json';
      if (csrf) headers['X-CSRF-Token'] = csrf;
      init.body = '';
    }
    const response = await fetch(path, init);
    if (response.status === 401 && admitted === 'token') {
      window.location.assign('/login');
      throw new ApiError(401, 'the session ended; log in again');
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { status: response.status, ok: response.ok, body };
  }

  async function apiOk(method, path) {
    const reply = await api(method, path);
    if (!reply.ok) {
      const message = reply.body && reply.body.error ? reply.body.error : 'HTTP ' + reply.status;
      throw new ApiError(reply.status, message);
    }
    return reply.body;
  }

  // ---- building the page ------------------------------------------------

  // An element with attributes, handlers (on*) and children (strings
  // become text nodes).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (name === 'class') node.className = value;
      else if (name === 'text') node.textContent = value;
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(id, text) {
    $(id).textContent = text;
  }

  function notice(message, bad) {
    const box = $('notice');
    box.textContent = message;
    box.className = bad ? 'notice bad' : 'notice';
    box.hidden = !message;
  }

  const pad = (n) => String(n).padStart(2, '0');

  // An RFC 3339 time of the API as local time; infinities as stored.
  function when(value) {
    if (!value) return '';
    const date = new Date(value.replace(/(\.\d{3})\d+/, '$1'));
    if (Number.isNaN(date.getTime())) return value;
    return date.getFullYear() + '-' + pad(date.getMonth() + 1) + '-' + pad(date.getDate()) + ' ' +
      pad(date.getHours()) + ':' + pad(date.getMinutes()) + ':' + pad(date.getSeconds());
  }

  function timeCell(value, cls) {
    return el('td', { class: cls, title: value || undefined, text: when(value) });
  }

  function age(seconds) {
    const s = Math.floor(seconds);
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + pad(s % 60) + ' s';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + pad(Math.floor(s % 3600 / 60)) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor(s % 86400 / 3600) + ' h';
  }

  const count = (n) => Number(n).toLocaleString('en-US');

  function route(row) {
    return (row.exchange === '' ? '(default)' : row.exchange) + ' → ' + row.routing_key;
  }

  function stateBadge(state) {
    return el('span', { class: 'state ' + state, text: state });
  }

  return { $, admitted, ApiError, api, apiOk, el, svg, setText, notice, pad, when, timeCell, age, count, route, stateBadge };
}());
