// The studio page: a client of this server's /v1 API and nothing more. Every error it shows is the API's own
// message; every video it plays or saves comes from the API with the key, so it works the same behind keys.

const KEY_STORE = 'sorrel.apiKey';
const $ = (sel, root = document) => root.querySelector(sel);

/** Films are jobs like videos, under their own path; their ids say which. */
const isFilm = (id) => id.startsWith('film_');
const jobPath = (id) => `${isFilm(id) ? '/v1/films' : '/v1/videos'}/${id}`;
/** A card's heading: a video's prompt, or a film's first line and length. */
function titleOf(job) {
  if (job.object !== 'film') return job.prompt;
  const n = job.shots.length;
  return `Film, ${n} shot${n === 1 ? '' : 's'}: ${job.shots[0].text}${n > 1 ? ' …' : ''}`;
}

const state = {
  models: new Map(), // id -> the /v1/models entry (modes, defaults, limits)
  watches: new Map(), // video id -> AbortController of its event stream
  blobs: new Map(), // video id -> object URLs to revoke when the card goes
  after: null, // cursor for older videos
};

/** An error the API answered with (OpenAI's shape), or a network failure (status 0). */
class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || (status ? `The server answered ${status}.` : 'Cannot reach the server.'));
    this.status = status;
    this.param = e.param || null;
    this.code = e.code || null;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORE) || '';
}

/** fetch() against the API with the key; throws ApiError on a non-2xx answer. */
async function api(path, { method = 'GET', body, signal, raw = false } = {}) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body && !(body instanceof FormData)) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body, signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, null);
  }
  if (!res.ok) {
    let parsed = null;
    try { parsed = await res.json(); } catch { /* not JSON: the status says enough */ }
    const err = new ApiError(res.status, parsed);
    if (res.status === 401) askForKey(err.message);
    throw err;
  }
  return raw ? res : parseJson(await res.text());
}

/** JSON.parse, keeping seeds (64-bit integers, beyond a JavaScript number's 53 bits) exact as strings: a seed
 * rounded on the way in would re-run as a different video. */
function parseJson(text) {
  return JSON.parse(text.replace(/"seed":(\d+)/g, '"seed":"$1"'));
}

// ---- the key ----------------------------------------------------------------------------------------------

/** Opens the key dialog with the API's reason; saving a key the API accepts starts the page again. */
function askForKey(reason) {
  const dialog = $('#key-dialog');
  $('#key-why').textContent = apiKey()
    ? 'The saved API key was refused. Enter another; it is kept in this browser only.'
    : 'This server needs an API key. It is kept in this browser only.';
  showError('key', reason);
  $('#key-input').setAttribute('aria-invalid', 'true');
  if (!dialog.open) dialog.showModal();
  $('#key-input').focus();
}

async function saveKey(event) {
  event.preventDefault();
  const key = $('#key-input').value.trim();
  if (!key) {
    showError('key', 'Enter the API key this server was started with.');
    return;
  }
  const button = $('#key-save');
  button.disabled = true;
  try {
    // Check the key on a cheap call before keeping it: a wrong key shows the API's message here.
    const res = await fetch('/v1/models', { headers: { Authorization: `Bearer ${key}` } });
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      showError('key', new ApiError(res.status, body).message);
      $('#key-input').setAttribute('aria-invalid', 'true');
      $('#key-input').select();
      return;
    }
  } catch {
    showError('key', 'Cannot reach the server to check the key.');
    return;
  } finally {
    button.disabled = false;
  }
  localStorage.setItem(KEY_STORE, key);
  clearError('key');
  $('#key-input').value = '';
  $('#key-dialog').close();
  announce('API key saved.');
  start();
}

// ---- errors next to fields ----------------------------------------------------------------------------------

function showError(field, message) {
  const p = $(`#${field}-error`);
  p.textContent = message;
  p.hidden = false;
  const input = document.getElementById(field);
  if (input) input.setAttribute('aria-invalid', 'true');
}

function clearError(field) {
  const p = $(`#${field}-error`);
  if (p) { p.textContent = ''; p.hidden = true; }
  const input = document.getElementById(field);
  if (input) input.removeAttribute('aria-invalid');
}

const FORM_FIELDS = ['prompt', 'negative_prompt', 'input_reference', 'input_video', 'strength', 'model', 'size',
  'seconds', 'steps', 'guidance', 'seed'];

function clearFormErrors() {
  [...FORM_FIELDS, 'form'].forEach(clearError);
}

/** Puts the API's message next to the field it names (its `param`), else under the form. */
function showApiError(err) {
  const field = FORM_FIELDS.includes(err.param) && !document.getElementById(`${err.param}-field`)?.hidden
    ? err.param : 'form';
  showError(field, err.message);
  const input = document.getElementById(field);
  if (input) input.focus();
}

function announce(text) {
  $('#announce').textContent = text;
}

// ---- the form -----------------------------------------------------------------------------------------------

function modelChanged() {
  const model = state.models.get($('#model').value);
  if (!model) return;
  const d = model.defaults || {};
  $('#size').placeholder = d.size || '';
  $('#seconds').placeholder = d.seconds ?? '';
  $('#steps').placeholder = d.steps ?? '';
  $('#guidance').placeholder = d.guidance ?? '';
  if (model.limits) $('#seconds').max = model.limits.max_seconds;
  const modes = model.modes || ['text_to_video'];
  // Only what this model can do is offered.
  const image = modes.includes('image_to_video');
  $('#input_reference-field').hidden = !image;
  if (!image) $('#input_reference').value = '';
  const restyles = modes.includes('video_to_video');
  $('#input_video-field').hidden = !restyles;
  $('#strength-field').hidden = !restyles;
  if (!restyles) $('#input_video').value = '';
  const names = { text_to_video: 'text to video', image_to_video: 'image to video', video_to_video: 'video to video' };
  $('#model-modes').textContent = `Does ${modes.map((m) => names[m] || m).join(', ')}; blank fields use the defaults shown.`;
}

async function loadModels() {
  const list = await api('/v1/models');
  const select = $('#model');
  const chosen = select.value;
  select.replaceChildren();
  state.models.clear();
  for (const m of list.data) {
    state.models.set(m.id, m);
    const option = document.createElement('option');
    option.value = m.id;
    option.textContent = m.id;
    select.append(option);
  }
  if (state.models.has(chosen)) select.value = chosen;
  const films = $('#film_model');
  const filmChosen = films.value;
  films.replaceChildren(...[...select.options].map((o) => o.cloneNode(true)));
  if (state.models.has(filmChosen)) films.value = filmChosen;
  modelChanged();
  filmModelChanged();
}

function filmModelChanged() {
  const model = state.models.get($('#film_model').value);
  $('#film_steps').placeholder = model?.defaults?.steps ?? '';
}

const FILM_FIELDS = { story: 'story', plan: 'story', model: 'film_model', shot_seconds: 'shot_seconds', steps: 'film_steps' };

async function submitFilm(event) {
  event.preventDefault();
  [...Object.values(FILM_FIELDS), 'film-form'].forEach(clearError);
  // The story is sent even when empty, so the API's own message says what is wrong.
  const body = { story: $('#story').value, model: $('#film_model').value };
  const number = (id) => $(`#${id}`).value.trim();
  if (number('shot_seconds') !== '') body.shot_seconds = Number(number('shot_seconds'));
  if (number('film_steps') !== '') body.steps = Number(number('film_steps'));
  if (!body.model) delete body.model;
  const button = $('#make-film');
  button.disabled = true;
  try {
    const film = await api('/v1/films', { method: 'POST', body });
    addCard(film, { first: true });
    announce(`Queued: ${titleOf(film)}`);
  } catch (err) {
    if (err.status === 401) return;
    const field = FILM_FIELDS[err.param] || 'film-form';
    showError(field, err.message);
    document.getElementById(field)?.focus();
  } finally {
    button.disabled = false;
  }
}

async function submit(event) {
  event.preventDefault();
  clearFormErrors();
  const form = new FormData();
  const text = (id) => document.getElementById(id).value.trim();
  // The prompt is sent even when empty, so the API's own message says what is wrong.
  form.append('prompt', $('#prompt').value);
  for (const id of ['negative_prompt', 'model', 'size', 'seconds', 'steps', 'guidance', 'seed']) {
    if (text(id) !== '') form.append(id, text(id));
  }
  const file = $('#input_reference').files[0];
  if (file && !$('#input_reference-field').hidden) form.append('input_reference', file, file.name);
  const clip = $('#input_video').files[0];
  if (clip && !$('#input_video-field').hidden) {
    form.append('input_video', clip, clip.name);
    if (text('strength') !== '') form.append('strength', text('strength'));
  }
  const button = $('#generate');
  button.disabled = true;
  try {
    const video = await api('/v1/videos', { method: 'POST', body: form });
    addCard(video, { first: true });
    announce(`Queued: ${video.prompt}`);
  } catch (err) {
    if (err.status !== 401) showApiError(err);
  } finally {
    button.disabled = false;
  }
}

/** Fills the form with a video's settings and seed, to make it again or vary it. */
function reuse(video) {
  $('#prompt').value = video.prompt;
  $('#negative_prompt').value = video.negative_prompt || '';
  if (state.models.has(video.model)) $('#model').value = video.model;
  modelChanged();
  $('#size').value = video.size;
  $('#seconds').value = video.seconds;
  $('#steps').value = video.steps ?? '';
  $('#guidance').value = video.guidance ?? '';
  $('#seed').value = video.seed ?? '';
  clearFormErrors();
  $('#prompt').focus();
  announce('The form holds that video’s settings and seed.');
}

// ---- the gallery ----------------------------------------------------------------------------------------------

const STATUS_TEXT = { queued: 'Queued', in_progress: 'Generating', completed: 'Done', failed: 'Failed' };

function card(id) {
  return document.querySelector(`.cards li[data-id="${CSS.escape(id)}"]`);
}

function addCard(video, { first = false } = {}) {
  if (card(video.id)) return;
  const li = $('#card-template').content.firstElementChild.cloneNode(true);
  li.dataset.id = video.id;
  li.setAttribute('aria-labelledby', `title-${video.id}`);
  $('.prompt', li).id = `title-${video.id}`;
  $('.prompt', li).textContent = titleOf(video);
  $('progress', li).setAttribute('aria-label', `Progress of “${titleOf(video)}”`);
  if (isFilm(video.id)) {
    // A film is made again from its story, not remixed; its storyboard is one more file.
    $('.reuse', li).remove();
    $('.remix', li).remove();
  } else {
    $('.film-only', li).remove();
  }
  $('.reuse', li)?.addEventListener('click', () => reuse(li.video));
  $('.remove', li).addEventListener('click', () => remove(li));
  li.querySelectorAll('.download').forEach((b) => b.addEventListener('click', () => download(li, b.dataset.variant)));
  $('.remix', li)?.addEventListener('submit', (e) => remix(e, li));
  const list = isFilm(video.id) ? $('#films') : $('#gallery');
  if (first) list.prepend(li); else list.append(li);
  update(li, video);
  galleryChanged();
  if (video.status === 'queued' || video.status === 'in_progress') watch(li);
}

function galleryChanged() {
  const n = $('#gallery').children.length;
  $('#gallery-status').textContent = n ? '' : 'No videos yet: type a prompt and press Generate.';
  $('#gallery-status').hidden = n > 0;
  const f = $('#films').children.length;
  $('#films-status').textContent = f ? '' : 'No films yet: write a story and press Make film.';
  $('#films-status').hidden = f > 0;
}

function setting(dl, name, value) {
  if (value === null || value === undefined || value === '') return;
  const dt = document.createElement('dt');
  dt.textContent = name;
  const dd = document.createElement('dd');
  dd.textContent = value;
  dl.append(dt, dd);
}

/** Shows a Video object on its card. */
function update(li, video) {
  const was = li.video?.status;
  li.video = video;
  li.className = `card ${video.status === 'queued' || video.status === 'in_progress' ? 'running' : video.status}`;
  $('.status', li).textContent = STATUS_TEXT[video.status] || video.status;
  $('progress', li).value = video.progress;
  $('.percent', li).textContent = `${video.progress} %`;
  const dl = $('.settings', li);
  dl.replaceChildren();
  setting(dl, 'Model', video.model);
  setting(dl, 'Size', video.size);
  if (video.object === 'film') {
    setting(dl, 'Length', `${Number(video.seconds).toFixed(1)} s (${video.frames} frames at ${video.fps} fps)`);
    setting(dl, 'Shots', video.shots.map((s) => `${s.index}. ${s.text} (${Number(s.seconds).toFixed(1)} s${s.continues ? ', continues' : ''})`).join('\n'));
    setting(dl, 'Characters', video.characters.map((c) => `${c.name}: ${c.look}`).join('; '));
  } else {
    setting(dl, 'Length', `${video.seconds} s (${video.frames} frames at ${video.fps} fps)`);
  }
  setting(dl, 'Steps', video.steps);
  setting(dl, 'Guidance', video.guidance);
  setting(dl, 'Seed', video.seed);
  setting(dl, 'Avoid', video.negative_prompt);
  setting(dl, 'Made', new Date(video.created_at * 1000).toLocaleString());
  const problem = $('.problem', li);
  problem.hidden = video.status !== 'failed';
  problem.textContent = video.error ? video.error.message : '';
  const done = video.status === 'completed';
  li.querySelectorAll('.download').forEach((b) => { b.hidden = !done; });
  const remix = $('.remix', li);
  if (remix) {
    remix.hidden = !done;
    const restyles = (state.models.get(video.model)?.modes || []).includes('video_to_video');
    $('.remix input[name="strength"]', li).closest('label').hidden = !restyles;
  }
  const remove = $('.remove', li);
  remove.textContent = done || video.status === 'failed' ? 'Delete' : 'Cancel';
  remove.setAttribute('aria-label', `${remove.textContent} “${titleOf(video)}”`);
  if (done && was !== 'completed') {
    // Fetched when the card comes into view: a long gallery does not download every video at once.
    whenVisible(li, () => {
      loadVideo(li);
      checkCredentials(li);
      if (isFilm(li.dataset.id)) loadStoryboard(li);
    });
    if (was) announce(`Finished: ${titleOf(video)}`);
  }
}

const onVisible = new WeakMap();
const visibility = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (!e.isIntersecting) continue;
    visibility.unobserve(e.target);
    const run = onVisible.get(e.target);
    onVisible.delete(e.target);
    if (run) run();
  }
}, { rootMargin: '400px' });

/** Runs `fn` once, when the card is on (or near) the screen. */
function whenVisible(li, fn) {
  onVisible.set(li, fn);
  visibility.observe(li);
}

function keepBlob(id, url) {
  if (!state.blobs.has(id)) state.blobs.set(id, []);
  state.blobs.get(id).push(url);
  return url;
}

async function loadVideo(li) {
  const id = li.dataset.id;
  try {
    const [video, poster] = await Promise.all([
      api(`${jobPath(id)}/content`, { raw: true }).then((r) => r.blob()),
      api(`${jobPath(id)}/content?variant=thumbnail`, { raw: true }).then((r) => r.blob()).catch(() => null),
    ]);
    const el = $('video', li);
    if (poster) el.poster = keepBlob(id, URL.createObjectURL(poster));
    el.src = keepBlob(id, URL.createObjectURL(video));
    el.setAttribute('aria-label', `Video: ${titleOf(li.video)}`);
    el.hidden = false;
    $('.placeholder', li).hidden = true;
  } catch (err) {
    $('.problem', li).textContent = `Cannot load the video: ${err.message}`;
    $('.problem', li).hidden = false;
  }
}

/** A film's storyboard on its card: one frame per shot beside its line of the story. */
async function loadStoryboard(li) {
  const id = li.dataset.id;
  try {
    const blob = await api(`${jobPath(id)}/content?variant=storyboard`, { raw: true }).then((r) => r.blob());
    const img = $('.storyboard', li);
    img.src = keepBlob(id, URL.createObjectURL(blob));
    img.alt = `Storyboard: ${li.video.shots.map((s) => s.text).join(' ')}`;
    img.hidden = false;
  } catch (err) {
    $('.problem', li).textContent = `Cannot load the storyboard: ${err.message}`;
    $('.problem', li).hidden = false;
  }
}

const EXTENSION = { video: 'mp4', thumbnail: 'webp', spritesheet: 'jpg', storyboard: 'png' };

async function download(li, variant) {
  const id = li.dataset.id;
  try {
    const res = await api(`${jobPath(id)}/content?variant=${variant}`, { raw: true });
    const url = URL.createObjectURL(await res.blob());
    const a = document.createElement('a');
    a.href = url;
    a.download = `${id}${variant === 'video' ? '' : `-${variant}`}.${EXTENSION[variant]}`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (err) {
    $('.problem', li).textContent = err.message;
    $('.problem', li).hidden = false;
  }
}

/** The credentials badge: what `sorrel verify` says about the file the server holds. */
async function checkCredentials(li) {
  const badge = $('.badge', li);
  badge.hidden = false;
  badge.className = 'badge checking';
  badge.textContent = 'Checking content credentials…';
  try {
    const v = await api(`${jobPath(li.dataset.id)}/credentials`);
    const parts = [];
    const states = {
      Trusted: 'Content credentials: trusted',
      Valid: 'Content credentials: valid',
      Invalid: 'Content credentials: INVALID (changed after signing)',
      Absent: 'No content credentials',
    };
    parts.push(states[v.state] || `Content credentials: ${v.state}`);
    if (v.signer) parts.push(`signed by ${v.signer}`);
    if (v.ai_generated) parts.push('AI-generated');
    const w = v.watermark || {};
    if (w.detected) parts.push(w.matches_credentials === false ? 'watermark found, but not the one the credentials name' : 'watermark found');
    else if (w.note) parts.push('watermark not checkable at this size');
    else if (w.error) parts.push(`watermark not checked (${w.error})`);
    else parts.push('watermark not found');
    badge.textContent = `${v.origin_established ? '✔' : '✖'} ${parts.join(' · ')}`;
    badge.title = [w.note, ...(v.failures || [])].filter(Boolean).join('\n');
    badge.className = v.origin_established ? 'badge' : 'badge bad';
  } catch (err) {
    badge.className = 'badge bad';
    badge.textContent = `Cannot check the credentials: ${err.message}`;
  }
}

async function remove(li) {
  const video = li.video;
  const running = video.status === 'queued' || video.status === 'in_progress';
  if (!running && !confirm(`Delete “${titleOf(video)}”? This cannot be undone.`)) return;
  try {
    await api(jobPath(video.id), { method: 'DELETE' });
  } catch (err) {
    if (err.status !== 404) {
      $('.problem', li).textContent = err.message;
      $('.problem', li).hidden = false;
      return;
    }
  }
  dropCard(li);
  announce(running ? `Cancelled: ${titleOf(video)}` : `Deleted: ${titleOf(video)}`);
}

function dropCard(li) {
  const id = li.dataset.id;
  state.watches.get(id)?.abort();
  state.watches.delete(id);
  (state.blobs.get(id) || []).forEach((u) => URL.revokeObjectURL(u));
  state.blobs.delete(id);
  const next = li.nextElementSibling || li.previousElementSibling;
  li.remove();
  galleryChanged();
  ($('.remove', next || document) || $('#videos')).focus();
}

async function remix(event, li) {
  event.preventDefault();
  const form = event.target;
  const err = $('.remix-error', form);
  err.hidden = true;
  const body = { prompt: form.prompt.value };
  if (form.strength.value !== '' && !form.strength.closest('label').hidden) body.strength = Number(form.strength.value);
  try {
    const video = await api(`/v1/videos/${li.dataset.id}/remix`, { method: 'POST', body });
    addCard(video, { first: true });
    form.reset();
    announce(`Queued a remix: ${video.prompt}`);
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
  }
}

// ---- live progress ----------------------------------------------------------------------------------------------

/** Reads a server-sent-events body (fetch, so the key can be sent) and calls `onEvent(name, data)`. */
async function readEvents(res, onEvent) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) onEvent(name, data.join('\n'));
    }
  }
}

/** Follows a running video's progress until it ends, reconnecting (with backoff) when the stream drops. */
async function watch(li) {
  const id = li.dataset.id;
  if (state.watches.has(id)) return;
  const abort = new AbortController();
  state.watches.set(id, abort);
  let delay = 500;
  let finished = false;
  while (!finished && !abort.signal.aborted) {
    try {
      const res = await api(`${jobPath(id)}/events`, { raw: true, signal: abort.signal });
      li.classList.remove('reconnecting');
      await readEvents(res, (name, data) => {
        if (name === 'video' || name === 'film') {
          const video = parseJson(data);
          update(li, video);
          delay = 500;
          finished = video.status === 'completed' || video.status === 'failed';
        } else if (name === 'deleted') {
          finished = true;
          dropCard(li);
        }
      });
    } catch (err) {
      if (err.name === 'AbortError') return;
      if (err.status === 404) { dropCard(li); return; }
      if (err.status === 401) return; // the key dialog is open; start() resumes after a key is saved
    }
    if (finished || abort.signal.aborted) break;
    // The stream ended before the video did: the connection dropped or the server restarted.
    li.classList.add('reconnecting');
    $('.status', li).textContent = 'Reconnecting…';
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 5000);
  }
  li.classList.remove('reconnecting');
  state.watches.delete(id);
}

async function loadVideos({ more = false } = {}) {
  const query = new URLSearchParams({ limit: '30', order: 'desc' });
  if (more && state.after) query.set('after', state.after);
  const list = await api(`/v1/videos?${query}`);
  for (const v of list.data) {
    const li = card(v.id);
    if (!li) addCard(v);
    else {
      // Seen before (the page is starting again after a key was entered): refresh it and follow it again.
      update(li, v);
      if (v.status === 'queued' || v.status === 'in_progress') watch(li);
    }
  }
  state.after = list.last_id;
  $('#more').hidden = !list.has_more;
  galleryChanged();
}

async function loadFilms() {
  const list = await api('/v1/films?limit=30&order=desc');
  for (const f of list.data) {
    const li = card(f.id);
    if (!li) addCard(f);
    else {
      update(li, f);
      if (f.status === 'queued' || f.status === 'in_progress') watch(li);
    }
  }
  galleryChanged();
}

// ---- start ------------------------------------------------------------------------------------------------------

async function start() {
  try {
    await loadModels();
    await loadVideos();
    await loadFilms();
  } catch (err) {
    if (err.status !== 401) {
      $('#gallery-status').hidden = false;
      $('#gallery-status').textContent = err.message;
    }
  }
}

$('#create-form').addEventListener('submit', submit);
$('#create-form').addEventListener('reset', () => setTimeout(() => { clearFormErrors(); modelChanged(); }));
$('#model').addEventListener('change', modelChanged);
$('#film-form').addEventListener('submit', submitFilm);
$('#film_model').addEventListener('change', filmModelChanged);
$('#key-form').addEventListener('submit', saveKey);
$('#key-cancel').addEventListener('click', () => $('#key-dialog').close());
$('#key-forget').addEventListener('click', () => {
  localStorage.removeItem(KEY_STORE);
  $('#key-input').value = '';
  announce('API key forgotten.');
});
$('#key-button').addEventListener('click', () => {
  clearError('key');
  $('#key-why').textContent = 'The API key this page sends. It is kept in this browser only.';
  $('#key-dialog').showModal();
  $('#key-input').focus();
});
$('#more').addEventListener('click', () => loadVideos({ more: true }).catch((e) => { $('#gallery-status').textContent = e.message; }));
start();
