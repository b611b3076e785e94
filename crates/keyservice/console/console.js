// keygate console: the admin API of `keygate serve --db`, in the browser.
// Data from the server is only ever put in the page as text (textContent, text nodes,
// input values): never as HTML.
'use strict';

(function () {
  const KEY_STORE = 'keygate.adminKey';
  const PAGE_SIZE = 20;
  const AUDIT_PAGE = 50;
  const REFUSED = 'Your admin key was refused: it may have been revoked or may have ' +
    'expired. Sign in again with a valid admin key.';

  const $ = (id) => document.getElementById(id);

  let policy = null;
  // The key shown once: dropped when its dialog closes.
  let secret = null;
  // The object URL of its downloaded file, revoked with it.
  let secretUrl = null;
  const page = { cursors: [null], index: 0, next: null, owner: '', status: '' };
  // The audit trail, newest first: the oldest entry shown so far.
  const audit = { oldest: null };

  class ApiError extends Error {
    constructor(status, code, description) {
      super(description);
      this.status = status;
      this.code = code;
    }
  }

  // ---- small helpers ----

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === 'class') {
        e.className = value;
      } else if (name.startsWith('data-') || name.startsWith('aria-')) {
        e.setAttribute(name, value);
      } else {
        e[name] = value;
      }
    }
    for (const child of children) {
      if (child !== null && child !== undefined) e.append(child);
    }
    return e;
  }

  function show(node, text) {
    node.textContent = text;
    node.hidden = !text;
  }

  // `2026-11-30T10:08:31Z` as `2026-11-30` and `10:08 UTC` (the full time as a tooltip).
  function time(iso) {
    if (!iso) return null;
    const m = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d)(?::\d\d)?Z$/.exec(iso);
    const t = el('time', { dateTime: iso, title: iso });
    if (m) {
      t.append(el('span', { class: 't-date' }, m[1]), ' ', el('span', { class: 't-time' }, m[2] + ' UTC'));
    } else {
      t.textContent = iso;
    }
    return t;
  }

  function adminKey() {
    return sessionStorage.getItem(KEY_STORE);
  }

  // ---- the admin API ----

  async function call(key, method, path, body) {
    const init = {
      method,
      headers: { Authorization: 'Bearer ' + key },
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'network', 'The key service cannot be reached (' + e.message + ').');
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      throw new ApiError(
        response.status,
        (data && data.error) || 'error',
        (data && data.error_description) || 'The key service answered ' + response.status + '.'
      );
    }
    return data;
  }

  // A call with the signed-in key; a refused key signs out with a message.
  async function api(method, path, body) {
    const key = adminKey();
    if (!key) {
      signOut('Sign in with an admin key.');
      throw new ApiError(401, 'invalid_token', 'not signed in');
    }
    try {
      return await call(key, method, path, body);
    } catch (e) {
      if (e.status === 401) signOut(REFUSED);
      throw e;
    }
  }

  // ---- views ----

  function showView(name) {
    for (const view of ['signin', 'keys', 'audit']) {
      $('view-' + view).hidden = view !== name;
    }
    $('nav').hidden = name === 'signin';
    $('nav-keys').setAttribute('aria-current', name === 'keys' ? 'page' : 'false');
    $('nav-audit').setAttribute('aria-current', name === 'audit' ? 'page' : 'false');
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORE);
    policy = null;
    for (const d of document.querySelectorAll('dialog')) {
      if (d.open) d.close();
    }
    $('keys-body').replaceChildren();
    $('audit-body').replaceChildren();
    show($('keys-flash'), '');
    showView('signin');
    show($('signin-message'), message || '');
    $('admin-key').value = '';
    $('admin-key').focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $('admin-key');
    const key = input.value.trim();
    show($('signin-message'), '');
    if (!key) {
      show($('admin-key-error'), 'Paste an admin key.');
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    $('signin-submit').disabled = true;
    try {
      policy = await call(key, 'GET', '/v1/admin/policy');
      sessionStorage.setItem(KEY_STORE, key);
      input.value = '';
      show($('admin-key-error'), '');
      input.removeAttribute('aria-invalid');
      await openKeys();
    } catch (e) {
      const text = e.status === 401
        ? 'That admin key was not accepted: check it and paste it again.'
        : e.message;
      show($('admin-key-error'), text);
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    } finally {
      $('signin-submit').disabled = false;
    }
  }

  // ---- keys ----

  async function openKeys() {
    showView('keys');
    await loadKeys();
  }

  function keysQuery() {
    const q = new URLSearchParams();
    q.set('limit', String(PAGE_SIZE));
    if (page.owner) q.set('owner', page.owner);
    if (page.status) q.set('status', page.status);
    const cursor = page.cursors[page.index];
    if (cursor) q.set('cursor', cursor);
    return '/v1/admin/keys?' + q.toString();
  }

  async function loadKeys() {
    show($('keys-error'), '');
    let data;
    try {
      data = await api('GET', keysQuery());
    } catch (e) {
      if (e.status !== 401) show($('keys-error'), e.message);
      return;
    }
    const rows = data.keys.map(keyRow);
    $('keys-body').replaceChildren(...rows);
    $('keys-empty').hidden = rows.length > 0;
    page.next = data.next_cursor;
    $('prev-page').disabled = page.index === 0;
    $('next-page').disabled = !page.next;
    $('page-info').textContent = rows.length
      ? 'Page ' + (page.index + 1) + ' · ' + rows.length + (rows.length === 1 ? ' key' : ' keys')
      : 'Page ' + (page.index + 1);
  }

  // A cell labelled for phone width (where rows are cards), its content in one box.
  function cell(tr, label, ...content) {
    const td = el('td', { 'data-label': label });
    const box = el('div', { class: 'v' });
    for (const c of content) {
      if (c !== null && c !== undefined) box.append(c);
    }
    if (!box.textContent && !box.children.length) box.append(el('span', { class: 'none' }, '—'));
    td.append(box);
    tr.append(td);
    return td;
  }

  function keyRow(k) {
    const tr = el('tr', { 'data-id': k.id });
    cell(tr, 'ID', el('code', { class: 'id' }, k.id));
    cell(tr, 'Owner', el('span', { class: 'owner' }, k.owner));
    cell(tr, 'Label', k.label ? el('span', { class: 'label' }, k.label) : null);
    cell(tr, 'Scopes', k.scopes.length ? k.scopes.join(', ') : null);
    cell(tr, 'Created', time(k.created_at));
    if (k.expires_at) {
      const expired = Date.parse(k.expires_at) <= Date.now();
      cell(tr, 'Expires', time(k.expires_at),
        expired ? el('span', { class: 'badge expired' }, 'expired') : null);
    } else {
      cell(tr, 'Expires', 'never');
    }
    cell(tr, 'Last used', k.last_used_at ? time(k.last_used_at) : 'never');
    cell(tr, 'Uses', String(k.uses));
    cell(tr, 'Status', el('span', { class: 'badge status-' + k.status }, k.status));
    cell(tr, 'Read-only', k.read_only ? 'yes' : 'no');
    const actions = el('div', { class: 'row-actions' });
    const who = k.label ? k.owner + ' (' + k.label + ')' : k.owner;
    const button = (action, text, cls) => el('button', {
      type: 'button',
      class: cls || '',
      'data-action': action,
      'aria-label': text + ' key ' + k.id + ' of ' + who,
      onclick: () => keyAction(action, k),
    }, text);
    if (k.status === 'enabled') actions.append(button('disable', 'Disable'));
    if (k.status === 'disabled') actions.append(button('enable', 'Enable'));
    if (k.status !== 'revoked') {
      actions.append(button('rotate', 'Rotate'));
      actions.append(button('revoke', 'Revoke', 'danger'));
    }
    cell(tr, 'Actions', actions.children.length ? actions : null);
    return tr;
  }

  function describe(k) {
    return 'key ' + k.id + ' of ' + k.owner + (k.label ? ' (' + k.label + ')' : '');
  }

  async function keyAction(action, k) {
    show($('keys-flash'), '');
    show($('keys-error'), '');
    const texts = {
      disable: ['Disable key', 'Disable ' + describe(k) + '? Requests with it are refused ' +
        'until it is enabled again.', 'Disable'],
      enable: ['Enable key', 'Enable ' + describe(k) + '? Requests with it are accepted ' +
        'again.', 'Enable'],
      revoke: ['Revoke key', 'Revoke ' + describe(k) + '? This cannot be undone: the key ' +
        'stops working for good.', 'Revoke'],
      rotate: ['Rotate key', 'Make a new key for ' + describe(k) + ', with the same owner, ' +
        'label, scopes and read-only flag? The new key is shown once.', 'Rotate'],
    };
    const [title, text, ok] = texts[action];
    const danger = action === 'revoke' || action === 'disable';
    const answer = await confirmDialog({ title, text, ok, danger, grace: action === 'rotate' });
    if (!answer) return;
    try {
      if (action === 'disable' || action === 'enable') {
        await api('PATCH', '/v1/admin/keys/' + encodeURIComponent(k.id),
          { status: action === 'disable' ? 'disabled' : 'enabled' });
        show($('keys-flash'), 'Key ' + k.id + (action === 'disable' ? ' disabled.' : ' enabled.'));
      } else if (action === 'revoke') {
        await api('DELETE', '/v1/admin/keys/' + encodeURIComponent(k.id));
        show($('keys-flash'), 'Key ' + k.id + ' revoked.');
      } else if (action === 'rotate') {
        const issued = await api('POST', '/v1/admin/keys/' + encodeURIComponent(k.id) +
          '/rotate', { grace: answer.grace });
        show($('keys-flash'), 'Key ' + k.id + ' rotated: the new key is ' + issued.id + '.');
        showSecret(issued, 'Rotated: your new key');
      }
    } catch (e) {
      if (e.status !== 401) show($('keys-error'), e.message);
    }
    if (adminKey()) {
      await loadKeys();
      if (!$('secret-dialog').open) focusAfterAction();
    }
  }

  // The button acted on is gone with the old rows: the focus goes to what happened.
  function focusAfterAction() {
    if ($('view-keys').hidden) return;
    if (!$('keys-error').hidden) $('keys-error').focus();
    else if ($('keys-flash').textContent) $('keys-flash').focus();
    else $('new-key').focus();
  }

  async function revokeOwner() {
    show($('keys-flash'), '');
    show($('keys-error'), '');
    const answer = await confirmDialog({
      title: 'Revoke all keys of an owner',
      text: 'Every key of this owner that is not revoked yet is revoked. This cannot be undone.',
      ok: 'Revoke all',
      danger: true,
      owner: page.owner,
    });
    if (!answer) return;
    try {
      const result = await api('DELETE', '/v1/admin/keys?owner=' + encodeURIComponent(answer.owner));
      show($('keys-flash'), 'Revoked ' + result.revoked + (result.revoked === 1 ? ' key' : ' keys') +
        ' of ' + result.owner + '.');
    } catch (e) {
      if (e.status !== 401) show($('keys-error'), e.message);
    }
    if (adminKey()) {
      await loadKeys();
      focusAfterAction();
    }
  }

  // ---- confirmation ----

  let confirmResolve = null;

  // Resolves with false (cancelled) or an object: {grace} for a rotation, {owner} for
  // revoking all of an owner (typed twice).
  function confirmDialog({ title, text, ok, danger, grace, owner }) {
    const dialog = $('confirm-dialog');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = ok;
    $('confirm-ok').className = danger ? 'danger' : 'primary';
    $('confirm-grace').hidden = !grace;
    $('confirm-grace-select').value = '0m';
    const typed = owner !== undefined;
    $('confirm-owner').hidden = !typed;
    $('confirm-typed').hidden = !typed;
    $('confirm-owner-input').value = owner || '';
    $('confirm-typed-input').value = '';
    $('confirm-typed-input').removeAttribute('aria-invalid');
    show($('confirm-error'), '');
    dialog.dataset.typed = typed ? 'yes' : 'no';
    return new Promise((resolve) => {
      confirmResolve = resolve;
      dialog.returnValue = '';
      dialog.showModal();
      if (typed) {
        (owner ? $('confirm-typed-input') : $('confirm-owner-input')).focus();
      } else {
        $('confirm-cancel').focus();
      }
    });
  }

  function confirmSubmit(event) {
    event.preventDefault();
    const dialog = $('confirm-dialog');
    let answer = { grace: $('confirm-grace-select').value };
    if (dialog.dataset.typed === 'yes') {
      const owner = $('confirm-owner-input').value;
      if (!owner) {
        show($('confirm-error'), 'Give the owner whose keys are revoked.');
        $('confirm-owner-input').focus();
        return;
      }
      if ($('confirm-typed-input').value !== owner) {
        show($('confirm-error'), 'The name typed is not the owner\'s: type "' + owner + '" exactly.');
        $('confirm-typed-input').setAttribute('aria-invalid', 'true');
        $('confirm-typed-input').focus();
        return;
      }
      answer = { owner };
    }
    finishConfirm(answer);
    dialog.close('ok');
  }

  function finishConfirm(answer) {
    const resolve = confirmResolve;
    confirmResolve = null;
    if (resolve) resolve(answer);
  }

  // ---- create ----

  function expiryText(choice) {
    if (choice === 'never') return 'Never';
    const m = /^(\d+)([mhdwy])$/.exec(choice);
    if (!m) return choice;
    const units = { m: 'minute', h: 'hour', d: 'day', w: 'week', y: 'year' };
    return m[1] + ' ' + units[m[2]] + (m[1] === '1' ? '' : 's');
  }

  const CREATE_FIELDS = ['owner', 'label', 'scopes', 'expires_in'];

  function clearCreateErrors() {
    show($('create-error'), '');
    for (const f of CREATE_FIELDS) show($('create-' + f + '-error'), '');
    for (const id of ['create-owner', 'create-label', 'create-expiry', 'create-scopes-text']) {
      $(id).removeAttribute('aria-invalid');
    }
  }

  function fieldError(field, text) {
    const target = $('create-' + field + '-error');
    if (!target) {
      show($('create-error'), text);
      return;
    }
    show(target, text);
    const input = {
      owner: 'create-owner',
      label: 'create-label',
      expires_in: 'create-expiry',
      scopes: policy && policy.scopes ? null : 'create-scopes-text',
    }[field];
    if (input) {
      $(input).setAttribute('aria-invalid', 'true');
      $(input).focus();
    } else {
      const first = document.querySelector('#create-scope-list input');
      if (first) first.focus();
    }
  }

  async function openCreate() {
    show($('keys-flash'), '');
    show($('keys-error'), '');
    try {
      policy = await api('GET', '/v1/admin/policy');
    } catch (e) {
      if (e.status !== 401) show($('keys-error'), e.message);
      return;
    }
    $('create-form').reset();
    clearCreateErrors();
    const list = $('create-scope-list');
    list.replaceChildren();
    if (policy.scopes) {
      policy.scopes.forEach((scope, i) => {
        const id = 'create-scope-' + i;
        list.append(el('div', { class: 'check' },
          el('input', { type: 'checkbox', id, value: scope, 'data-scope': scope }),
          el('label', { htmlFor: id }, scope)));
      });
      list.hidden = false;
      $('create-scope-free').hidden = true;
      if (!policy.scopes.length) list.append(el('p', { class: 'hint' }, 'The catalog is empty.'));
    } else {
      list.hidden = true;
      $('create-scope-free').hidden = false;
    }
    const select = $('create-expiry');
    select.replaceChildren(...policy.expiry_choices.map((c) =>
      el('option', { value: c, selected: c === policy.default_choice }, expiryText(c))));
    $('create-expiry-hint').textContent = (policy.max_expiry === 'never'
      ? 'The policy sets no maximum'
      : 'The policy allows at most ' + expiryText(policy.max_expiry).toLowerCase()) +
      '; the default is ' + expiryText(policy.default_expiry).toLowerCase() + '.';
    $('create-dialog').showModal();
    $('create-owner').focus();
  }

  async function createSubmit(event) {
    event.preventDefault();
    clearCreateErrors();
    const owner = $('create-owner').value;
    if (!owner.trim()) {
      fieldError('owner', 'Give the owner of the key.');
      return;
    }
    let scopes;
    if (policy && policy.scopes) {
      scopes = Array.from(document.querySelectorAll('#create-scope-list input:checked'),
        (i) => i.value);
    } else {
      scopes = $('create-scopes-text').value.split(',').map((s) => s.trim()).filter(Boolean);
    }
    const body = {
      owner,
      scopes,
      expires_in: $('create-expiry').value,
      read_only: $('create-read-only').checked,
    };
    const label = $('create-label').value;
    if (label) body.label = label;
    $('create-submit').disabled = true;
    try {
      const issued = await api('POST', '/v1/admin/keys', body);
      $('create-dialog').close();
      $('create-form').reset();
      show($('keys-flash'), 'Key ' + issued.id + ' created for ' + owner + '.');
      showSecret(issued, 'Your new key');
      loadKeys();
    } catch (e) {
      if (e.status === 401) return;
      const m = /^(?:body\.)?([a-z_]+)(?:\[\d+\])?: ?/.exec(e.message);
      if (m && CREATE_FIELDS.includes(m[1])) {
        fieldError(m[1], e.message);
      } else {
        show($('create-error'), e.message);
      }
    } finally {
      $('create-submit').disabled = false;
    }
  }

  // ---- the key, shown once ----

  function showSecret(issued, title) {
    secret = { id: issued.id, api_key: issued.api_key, expires_at: issued.expires_at };
    $('secret-title').textContent = title;
    $('secret-id').textContent = issued.id;
    $('secret-expires').textContent = issued.expires_at || 'never';
    const replaces = issued.replaces || '';
    $('secret-replaces').textContent = replaces;
    $('secret-replaces').hidden = !replaces;
    $('secret-replaces-term').hidden = !replaces;
    $('secret-key').value = issued.api_key;
    show($('secret-status'), '');
    $('secret-dialog').showModal();
    $('secret-key').focus();
    $('secret-key').select();
  }

  function forgetSecret() {
    secret = null;
    if (secretUrl) URL.revokeObjectURL(secretUrl);
    secretUrl = null;
    $('secret-key').value = '';
    $('secret-id').textContent = '';
    $('secret-expires').textContent = '';
    $('secret-replaces').textContent = '';
    show($('secret-status'), '');
    const selection = window.getSelection();
    if (selection) selection.removeAllRanges();
  }

  async function copySecret() {
    if (!secret) return;
    try {
      await navigator.clipboard.writeText(secret.api_key);
      show($('secret-status'), 'Copied to the clipboard.');
      return;
    } catch (e) {
      // No clipboard permission: copy the selection instead.
    }
    const input = $('secret-key');
    input.focus();
    input.select();
    let copied = false;
    try {
      copied = document.execCommand('copy');
    } catch (e) {
      copied = false;
    }
    show($('secret-status'), copied
      ? 'Copied to the clipboard.'
      : 'The key is selected: press Ctrl+C (⌘C) to copy it.');
  }

  function downloadSecret() {
    if (!secret) return;
    const doc = { id: secret.id, api_key: secret.api_key, expires_at: secret.expires_at };
    const blob = new Blob([JSON.stringify(doc, null, 2) + '\n'], { type: 'application/json' });
    if (secretUrl) URL.revokeObjectURL(secretUrl);
    secretUrl = URL.createObjectURL(blob);
    const a = el('a', { href: secretUrl, download: 'keygate-key-' + secret.id + '.json', hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    show($('secret-status'), 'Downloaded keygate-key-' + secret.id + '.json.');
  }

  // ---- audit ----

  async function openAudit() {
    showView('audit');
    await loadAudit(false);
  }

  // The latest entries, or (`more`) those before the oldest shown.
  async function loadAudit(more) {
    show($('audit-error'), '');
    const q = new URLSearchParams({ order: 'newest', limit: String(AUDIT_PAGE) });
    if (more && audit.oldest !== null) q.set('before', String(audit.oldest));
    let data;
    try {
      data = await api('GET', '/v1/admin/audit?' + q.toString());
    } catch (e) {
      if (e.status !== 401) show($('audit-error'), e.message);
      return;
    }
    const rows = data.entries.map((entry) => {
      const tr = el('tr', { 'data-seq': String(entry.seq) });
      cell(tr, '#', String(entry.seq));
      cell(tr, 'Time', time(entry.at));
      cell(tr, 'Actor', entry.actor);
      cell(tr, 'Action', el('span', { class: 'badge action' }, entry.action));
      cell(tr, 'Key', entry.key_id ? el('code', { class: 'id' }, entry.key_id) : null);
      cell(tr, 'Detail', entry.detail);
      return tr;
    });
    if (more) {
      $('audit-body').append(...rows);
    } else {
      $('audit-body').replaceChildren(...rows);
    }
    if (data.entries.length) audit.oldest = data.entries[data.entries.length - 1].seq;
    else if (!more) audit.oldest = null;
    $('audit-empty').hidden = $('audit-body').children.length > 0;
    $('audit-more').hidden = data.entries.length < AUDIT_PAGE || audit.oldest <= 1;
  }

  // ---- wiring ----

  function start() {
    $('signin-form').addEventListener('submit', signIn);
    $('sign-out').addEventListener('click', () => signOut('Signed out.'));
    $('nav-keys').addEventListener('click', openKeys);
    $('nav-audit').addEventListener('click', openAudit);

    $('filter-form').addEventListener('submit', (event) => {
      event.preventDefault();
      show($('keys-flash'), '');
      page.owner = $('filter-owner').value;
      page.status = $('filter-status').value;
      page.cursors = [null];
      page.index = 0;
      loadKeys();
    });
    $('filter-clear').addEventListener('click', () => {
      $('filter-owner').value = '';
      $('filter-status').value = '';
      page.owner = '';
      page.status = '';
      page.cursors = [null];
      page.index = 0;
      loadKeys();
    });
    $('next-page').addEventListener('click', () => {
      if (!page.next) return;
      page.cursors = page.cursors.slice(0, page.index + 1);
      page.cursors.push(page.next);
      page.index += 1;
      loadKeys();
    });
    $('prev-page').addEventListener('click', () => {
      if (page.index === 0) return;
      page.index -= 1;
      loadKeys();
    });

    $('new-key').addEventListener('click', openCreate);
    $('create-form').addEventListener('submit', createSubmit);
    $('create-cancel').addEventListener('click', () => $('create-dialog').close());

    $('revoke-owner-open').addEventListener('click', revokeOwner);
    $('confirm-form').addEventListener('submit', confirmSubmit);
    $('confirm-cancel').addEventListener('click', () => $('confirm-dialog').close());
    $('confirm-dialog').addEventListener('close', () => finishConfirm(false));
    for (const id of ['confirm-owner-input', 'confirm-typed-input']) {
      $(id).addEventListener('input', () => {
        show($('confirm-error'), '');
        $('confirm-typed-input').removeAttribute('aria-invalid');
      });
    }
    $('admin-key').addEventListener('input', () => {
      show($('admin-key-error'), '');
      $('admin-key').removeAttribute('aria-invalid');
    });

    $('secret-copy').addEventListener('click', copySecret);
    $('secret-download').addEventListener('click', downloadSecret);
    $('secret-close').addEventListener('click', () => $('secret-dialog').close());
    $('secret-dialog').addEventListener('close', () => {
      forgetSecret();
      focusAfterAction();
    });

    $('audit-refresh').addEventListener('click', () => loadAudit(false));
    $('audit-more').addEventListener('click', () => loadAudit(true));

    if (adminKey()) {
      api('GET', '/v1/admin/policy').then((p) => {
        policy = p;
        return openKeys();
      }).catch((e) => {
        if (e.status !== 401) signOut(e.message);
      });
    } else {
      signOut('');
    }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
