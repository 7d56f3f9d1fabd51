// Drives the studio page in headless Debian Chromium (Playwright) against real `sorrel serve` processes with
// the embedded model, as a person would: type, watch, play, download, check the credentials, delete; make a
// film from a story; lose the server mid-job and see the page reconnect; meet a key-protected server. crates/sorrel-cli/tests/studio.rs
// runs it with SORREL_BIN set; SORREL_STUDIO_SCREENSHOT=PATH also saves the README's screenshot.

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const BIN = process.env.SORREL_BIN;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOT = process.env.SORREL_STUDIO_SCREENSHOT;
const PROMPT = 'a red ball bounces on a blue floor';

function check(cond, what) {
  if (!cond) throw new Error(`FAILED: ${what}`);
  console.log(`ok - ${what}`);
}

const servers = [];

/** Starts `sorrel serve` (embedded model) and resolves with its URL once it listens. */
function serve(dataDir, args = []) {
  const env = { ...process.env, RUST_LOG: 'warn' };
  delete env.SORREL_API_KEYS;
  const proc = spawn(BIN, ['serve', '--data-dir', dataDir, '--poll-after-ms', '50', ...args], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  servers.push(proc);
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: proc.stdout });
    lines.once('line', (line) => {
      const url = line.replace(/^listening on /, '').trim();
      if (!url.startsWith('http://')) reject(new Error(`sorrel serve printed ${line}`));
      resolve({ proc, url, port: new URL(url).port });
    });
    proc.once('exit', (code) => reject(new Error(`sorrel serve exited with ${code} before listening`)));
  });
}

/** What the API itself answers to a create request with these form fields (for comparing messages). */
async function apiCreate(url, fields, key) {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const res = await fetch(`${url}/v1/videos`, { method: 'POST', body: form, headers });
  return { status: res.status, body: await res.json() };
}

/** Waits until `fn` (run in the page) returns a truthy value. */
async function until(page, fn, arg, timeout = 60_000) {
  return (await page.waitForFunction(fn, arg, { timeout, polling: 100 })).jsonValue();
}

/** Records every value a card's progress bar takes, from before the video is created. */
async function recordProgress(page) {
  await page.evaluate(() => {
    window.progressSeen = {};
    new MutationObserver((records) => {
      for (const r of records) {
        const bar = r.target;
        if (bar.tagName !== 'PROGRESS') continue;
        const id = bar.closest('li').dataset.id;
        (window.progressSeen[id] ||= []).push(Number(bar.getAttribute('value')));
      }
    }).observe(document.getElementById('gallery'), { subtree: true, attributes: true, attributeFilter: ['value'] });
  });
}

const newestCard = (page) => page.locator('#gallery li').first();

async function studioWithoutKeys(browser, dir) {
  const { url } = await serve(join(dir, 'open'), ['--port', '0']);
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(url);
  await page.locator('#model option[value="sorrel-toyworld"]').waitFor({ state: 'attached' });
  check(await page.locator('#size').getAttribute('placeholder') === '32x32', 'the form shows the model\'s default size');
  check(await page.locator('#input_reference-field').isVisible(), 'the picture upload is offered: the embedded model does image to video');
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea, button')]
    .filter((el) => el.offsetParent !== null)
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
    .map((el) => el.id || el.outerHTML.slice(0, 60)));
  check(unlabelled.length === 0, `every visible control has a label (${unlabelled.join(', ') || 'none missing'})`);

  // Bad input: the API's own message, next to the field it names.
  await page.click('#generate');
  const empty = await apiCreate(url, { prompt: '' });
  await page.locator('#prompt-error').waitFor();
  check(empty.status === 400 && await page.locator('#prompt-error').textContent() === empty.body.error.message,
    `an empty prompt shows the API's message next to the prompt: "${empty.body.error.message}"`);
  check(await page.evaluate(() => document.activeElement.id) === 'prompt', 'focus moves to the field in error');
  await page.fill('#prompt', PROMPT);
  await page.fill('#size', '100x');
  await page.click('#generate');
  const badSize = await apiCreate(url, { prompt: PROMPT, size: '100x' });
  await page.locator('#size-error').waitFor();
  check(badSize.status === 400 && await page.locator('#size-error').textContent() === badSize.body.error.message,
    `a bad size shows the API's message next to the size: "${badSize.body.error.message}"`);
  check(await page.locator('#prompt-error').isHidden(), 'the earlier error is cleared');
  await page.fill('#size', '');

  // Create with the keyboard and watch the progress.
  await recordProgress(page);
  await page.focus('#generate');
  await page.keyboard.press('Enter');
  await newestCard(page).waitFor();
  const id = await newestCard(page).getAttribute('data-id');
  // Fixed to this video: newer cards go in front of it.
  const card = page.locator(`#gallery li[data-id="${id}"]`);
  await card.locator('.status', { hasText: 'Done' }).waitFor({ timeout: 60_000 });
  const seen = await page.evaluate((i) => window.progressSeen[i] || [], id);
  check(seen.at(-1) === 100 && seen.every((v, i) => i === 0 || v >= seen[i - 1]),
    `the progress bar rose to 100 % without going back (${seen.join(' ')})`);

  // Play it to the end in the page.
  await card.locator('video').waitFor({ state: 'visible' });
  const played = await card.locator('video').evaluate((v) => new Promise((resolve, reject) => {
    const go = () => {
      v.addEventListener('ended', () => resolve({
        ended: v.ended, time: v.currentTime, duration: v.duration, width: v.videoWidth, height: v.videoHeight,
        frames: v.getVideoPlaybackQuality().totalVideoFrames,
      }), { once: true });
      v.addEventListener('error', () => reject(new Error(`video error ${v.error && v.error.code}`)), { once: true });
      v.play().catch(reject);
    };
    if (v.readyState >= 1) go(); else v.addEventListener('loadedmetadata', go, { once: true });
  }));
  check(played.ended && played.width === 32 && played.height === 32 && Math.abs(played.duration - 1) < 0.01
    && played.frames >= 8, `the video plays to the end in the page (${JSON.stringify(played)})`);

  // The credentials badge says what `sorrel verify` says.
  const badge = card.locator('.badge');
  await badge.locator('text=/Content credentials/').waitFor();
  const badgeText = await badge.textContent();
  check(/^✔ Content credentials: trusted · signed by Sorrel local signer/.test(badgeText) && badgeText.includes('AI-generated')
    && badgeText.includes('watermark not checkable at this size'), `the credentials badge: "${badgeText}"`);

  // Downloads are the API's files, byte for byte.
  const api = async (variant) => Buffer.from(await (await fetch(`${url}/v1/videos/${id}/content?variant=${variant}`)).arrayBuffer());
  for (const [variant, button, magic] of [['video', 'Download video', 'ftyp'], ['thumbnail', 'Thumbnail', 'WEBP']]) {
    const [download] = await Promise.all([page.waitForEvent('download'), card.getByRole('button', { name: button }).click()]);
    const saved = join(dir, download.suggestedFilename());
    await download.saveAs(saved);
    const bytes = readFileSync(saved);
    check(bytes.equals(await api(variant)) && bytes.includes(magic),
      `"${button}" saves ${download.suggestedFilename()} (${bytes.length} bytes, the API's ${variant})`);
  }

  // The settings and the exact seed come back into the form.
  const raw = await (await fetch(`${url}/v1/videos/${id}`)).text();
  const seed = raw.match(/"seed":(\d+)/)[1];
  await card.getByRole('button', { name: 'Use these settings' }).click();
  check(await page.inputValue('#seed') === seed && await page.inputValue('#prompt') === PROMPT,
    `"Use these settings" fills the form with the prompt and the exact 64-bit seed ${seed}`);

  // Image to video: the saved thumbnail uploaded as the first frame; the new video starts on that picture.
  const picture = join(dir, `${id}-thumbnail.webp`);
  await page.fill('#prompt', PROMPT);
  await page.setInputFiles('#input_reference', picture);
  await page.click('#generate');
  await page.locator('#gallery li').nth(1).waitFor();
  const i2v = newestCard(page);
  await i2v.locator('.status', { hasText: 'Done' }).waitFor({ timeout: 60_000 });
  await i2v.locator('video').waitFor({ state: 'visible' });
  // The first frame against the picture, and (as a yardstick) the text-to-video clip's first frame against it.
  const psnr = await page.evaluate(async ([ids, webp]) => {
    const img = new Image();
    img.src = URL.createObjectURL(new Blob([Uint8Array.from(atob(webp), (c) => c.charCodeAt(0))], { type: 'image/webp' }));
    await img.decode();
    const pixels = (source) => {
      const c = document.createElement('canvas');
      c.width = 32; c.height = 32;
      const g = c.getContext('2d');
      g.drawImage(source, 0, 0, 32, 32);
      return g.getImageData(0, 0, 32, 32).data;
    };
    const b = pixels(img);
    const out = [];
    for (const i of ids) {
      const v = document.querySelector(`#gallery li[data-id="${i}"] video`);
      if (v.readyState < 2) await new Promise((r) => v.addEventListener('loadeddata', r, { once: true }));
      v.pause();
      await new Promise((r) => { v.addEventListener('seeked', r, { once: true }); v.currentTime = 0; });
      const a = pixels(v);
      let se = 0; let n = 0;
      for (let k = 0; k < a.length; k += 4) for (let c = 0; c < 3; c++) { se += (a[k + c] - b[k + c]) ** 2; n++; }
      out.push(10 * Math.log10(255 ** 2 / (se / n)));
    }
    return out;
  }, [[await i2v.getAttribute('data-id'), id], readFileSync(picture).toString('base64')]);
  check(psnr[0] > 25 && psnr[0] > psnr[1] + 6, `an uploaded picture becomes the first frame (${psnr[0].toFixed(1)} dB `
    + `from the picture; the text-to-video clip's first frame: ${psnr[1].toFixed(1)} dB)`);
  await page.setInputFiles('#input_reference', []);

  // A remix of the first video, from its card.
  const remixForm = page.locator(`#gallery li[data-id="${id}"] form.remix`);
  await remixForm.getByLabel('New prompt for a remix').fill('a red ball bounces on a green floor');
  await remixForm.getByLabel('Strength').fill('0.5');
  await remixForm.getByRole('button', { name: 'Remix' }).click();
  await page.locator('#gallery li').nth(2).waitFor();
  const remixCard = newestCard(page);
  await remixCard.locator('.status', { hasText: 'Done' }).waitFor({ timeout: 60_000 });
  const remixed = await (await fetch(`${url}/v1/videos/${await remixCard.getAttribute('data-id')}`)).json();
  check(remixed.remixed_from_video_id === id && remixed.prompt === 'a red ball bounces on a green floor',
    'Remix on a card makes a new video from that one, with the new prompt');

  // Video to video: the saved MP4 uploaded as a clip to restyle; its length comes from the clip.
  check(await page.locator('#input_video-field').isVisible(), 'the clip upload is offered: the embedded model does video to video');
  await page.fill('#prompt', 'a red ball bounces on a blue floor');
  await page.fill('#seconds', '');
  await page.setInputFiles('#input_video', join(dir, `${id}.mp4`));
  await page.fill('#strength', '0.5');
  await page.click('#generate');
  await page.locator('#gallery li').nth(3).waitFor();
  const v2v = newestCard(page);
  await v2v.locator('.status', { hasText: 'Done' }).waitFor({ timeout: 60_000 });
  const restyled = await (await fetch(`${url}/v1/videos/${await v2v.getAttribute('data-id')}`)).json();
  check(restyled.status === 'completed' && restyled.frames === 8 && restyled.seconds === '1',
    `an uploaded clip is restyled (${restyled.frames} frames, ${restyled.seconds} s, as long as the clip)`);
  await page.setInputFiles('#input_video', []);
  await page.fill('#strength', '');

  // A phone-width screen: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  const wide = await page.evaluate(() => document.documentElement.scrollWidth);
  check(wide <= 390, `at 390 px wide the page does not scroll sideways (${wide} px)`);
  await page.setViewportSize({ width: 1280, height: 860 });

  // The gallery on a phone, opened afresh: the oldest card, screens below, fetches its video only when
  // scrolled to.
  const phone = await context.newPage();
  await phone.setViewportSize({ width: 390, height: 844 });
  await phone.goto(url);
  await phone.locator('#gallery li').nth(3).waitFor();
  await newestCard(phone).locator('video').waitFor({ state: 'visible' });
  const oldest = phone.locator('#gallery li').last();
  const below = await oldest.evaluate((li) => li.getBoundingClientRect().top);
  const waited = await oldest.locator('video').isHidden();
  await oldest.scrollIntoViewIfNeeded();
  await oldest.locator('video').waitFor({ state: 'visible' });
  check(below > 2 * 844 && waited, `a card ${Math.round(below)} px down loads its video only when scrolled to`);
  await phone.close();

  if (SHOT) {
    // A second take for the picture, then back to the top.
    await page.fill('#prompt', 'a large green box moves to the left');
    await page.fill('#seed', '5');
    const before = await page.locator('#gallery li').count();
    await page.click('#generate');
    await page.locator('#gallery li').nth(before).waitFor();
    await newestCard(page).locator('.badge', { hasText: /^✔ Content credentials: trusted/ }).waitFor({ timeout: 60_000 });
    await page.fill('#prompt', 'a blue sphere rolls across the ground');
    // (Videos load when their card comes into view: the ones on screen.)
    await until(page, () => [...document.querySelectorAll('#gallery video:not([hidden])')].every((v) => v.readyState >= 2));
    // Show each take at its middle, and let the players' loading indicators go.
    await page.evaluate(() => Promise.all([...document.querySelectorAll('#gallery video:not([hidden])')].map((v) => new Promise((r) => {
      v.addEventListener('seeked', r, { once: true });
      v.currentTime = v.duration / 2;
    }))));
    await page.waitForTimeout(1000);
    await page.setViewportSize({ width: 1280, height: 1120 });
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: SHOT });
    await page.setViewportSize({ width: 1280, height: 860 });
    console.log(`saved the screenshot ${SHOT}`);
  }

  // Delete, after the page asks.
  let asked = '';
  page.once('dialog', (d) => { asked = d.message(); d.accept(); });
  await page.locator(`#gallery li[data-id="${id}"]`).getByRole('button', { name: /^Delete/ }).click();
  await page.locator(`#gallery li[data-id="${id}"]`).waitFor({ state: 'detached' });
  const gone = await fetch(`${url}/v1/videos/${id}`);
  check(asked.startsWith('Delete') && gone.status === 404, `Delete asks first ("${asked}") and the API no longer has the video`);
  check(pageErrors.length === 0, `no script errors (${pageErrors.join('; ') || 'none'})`);
  await context.close();
}

/** A film from a story typed into the page: its card follows it to the end, shows the storyboard and plays the
 * whole film; a bad story shows the API's message next to the story. */
async function films(browser, dir) {
  const { url } = await serve(join(dir, 'films'), ['--port', '0']);
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(url);
  await page.locator('#film_model option[value="sorrel-toyworld"]').waitFor({ state: 'attached' });
  // The films load after the videos: wait for the list's own word rather than its "Loading…".
  await page.locator('#films-status', { hasText: 'No films yet' }).waitFor();
  check(await page.locator('#films-status').textContent() === 'No films yet: write a story and press Make film.',
    'the films list says how to start');

  await page.fill('#story', '   ');
  await page.click('#make-film');
  const empty = await (await fetch(`${url}/v1/films`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ story: '   ' }),
  })).json();
  await page.locator('#story-error').waitFor();
  check(await page.locator('#story-error').textContent() === empty.error.message,
    `an empty story shows the API's message next to the story: "${empty.error.message}"`);

  const story = 'Ruby is a small red ball. The floor is green.\n\nRuby bounces for 2 seconds. Then Ruby moves to the left.'
    + '\n\nRuby moves up.';
  await page.fill('#story', story);
  await page.fill('#shot_seconds', '1');
  await page.click('#make-film');
  const card = page.locator('#films li').first();
  await card.waitFor();
  const id = await card.getAttribute('data-id');
  check(id.startsWith('film_') && await page.locator('#story-error').isHidden(), `Make film queues a film (${id})`);
  await card.locator('.status', { hasText: 'Done' }).waitFor({ timeout: 120_000 });
  const film = await (await fetch(`${url}/v1/films/${id}`)).json();
  check(film.shots.length === 3 && (await card.locator('h3').textContent()).startsWith('Film, 3 shots: Ruby bounces'),
    `the card is titled by the film (${await card.locator('h3').textContent()})`);

  // The storyboard on the card: one 108-pixel row per shot under a 12-pixel margin.
  const board = card.locator('img.storyboard');
  await board.waitFor({ state: 'visible' });
  const height = await board.evaluate(async (img) => { await img.decode(); return img.naturalHeight; });
  check(height === 12 + 3 * 108, `the card shows the storyboard, one row per shot (${height} px high)`);

  // The whole film plays in the page.
  const played = await card.locator('video').evaluate((v) => new Promise((resolve, reject) => {
    const go = () => {
      v.addEventListener('ended', () => resolve({ ended: v.ended, duration: v.duration }), { once: true });
      v.addEventListener('error', () => reject(new Error(`video error ${v.error && v.error.code}`)), { once: true });
      v.play().catch(reject);
    };
    if (v.readyState >= 1) go(); else v.addEventListener('loadedmetadata', go, { once: true });
  }));
  check(played.ended && Math.abs(played.duration - film.seconds) < 0.01,
    `the film plays to the end (${played.duration.toFixed(2)} s, the API says ${film.seconds} s)`);

  const [download] = await Promise.all([page.waitForEvent('download'), card.getByRole('button', { name: 'Storyboard' }).click()]);
  const saved = join(dir, download.suggestedFilename());
  await download.saveAs(saved);
  const theirs = Buffer.from(await (await fetch(`${url}/v1/films/${id}/content?variant=storyboard`)).arrayBuffer());
  check(readFileSync(saved).equals(theirs), `"Storyboard" saves ${download.suggestedFilename()}, the API's PNG`);
  const badge = await card.locator('.badge', { hasText: /Content credentials/ }).textContent();
  check(badge.startsWith('✔ Content credentials: trusted'), `the film's credentials badge: "${badge}"`);

  let asked = '';
  page.once('dialog', (d) => { asked = d.message(); d.accept(); });
  await card.getByRole('button', { name: /^Delete/ }).click();
  await page.locator(`#films li[data-id="${id}"]`).waitFor({ state: 'detached' });
  check(asked.startsWith('Delete') && (await fetch(`${url}/v1/films/${id}`)).status === 404,
    'Delete on a film card asks first and removes the film');
  check(pageErrors.length === 0, `no script errors (${pageErrors.join('; ') || 'none'})`);
  await context.close();
}

async function reconnects(browser, dir) {
  const data = join(dir, 'restart');
  let server = await serve(data, ['--port', '0']);
  const page = await browser.newPage();
  await page.goto(server.url);
  await page.locator('#model option').first().waitFor({ state: 'attached' });
  // Long enough (about 10 s) to lose the server in the middle.
  await page.fill('#prompt', 'a yellow ball moves to the right');
  await page.fill('#size', '64x64');
  await page.fill('#seconds', '2');
  await page.fill('#steps', '50');
  await recordProgress(page);
  await page.click('#generate');
  const card = newestCard(page);
  const id = await card.getAttribute('data-id');
  await until(page, (i) => (window.progressSeen[i] || []).some((v) => v >= 10), id);
  server.proc.kill('SIGKILL');
  await card.locator('.status', { hasText: 'Reconnecting' }).waitFor({ timeout: 20_000 });
  check(true, 'killing the server mid-job shows "Reconnecting…" on the card');
  server = await serve(data, ['--port', server.port]);
  await card.locator('.status', { hasText: 'Done' }).waitFor({ timeout: 120_000 });
  await card.locator('video').waitFor({ state: 'visible' });
  check(await page.locator('#gallery li').count() === 1 && await card.locator('progress').getAttribute('value') === '100',
    'after the restart the same card follows the re-queued job to 100 % and shows the video, without a reload');

  // Cancel a running video from its card: no question asked, the card goes, and so does the job.
  await page.click('#generate');
  await page.locator('#gallery li').nth(1).waitFor();
  const runningId = await newestCard(page).getAttribute('data-id');
  const running = page.locator(`#gallery li[data-id="${runningId}"]`);
  await until(page, (i) => (window.progressSeen[i] || []).some((v) => v > 0), runningId);
  await running.getByRole('button', { name: /^Cancel/ }).click();
  await running.waitFor({ state: 'detached' });
  const cancelled = await fetch(`${server.url}/v1/videos/${runningId}`);
  check(cancelled.status === 404, 'Cancel on a running video stops it and removes it');
  await page.close();
}

async function withKeys(browser, dir) {
  const key = 'studio-test-key';
  const { url } = await serve(join(dir, 'keys'), ['--port', '0', '--api-key', key]);
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(url);
  const dialog = page.locator('#key-dialog');
  await dialog.locator('#key-input').waitFor({ state: 'visible' });
  const missing = await (await fetch(`${url}/v1/models`)).json();
  check(await page.locator('#key-error').textContent() === missing.error.message,
    `a key-protected server: the page asks for the key with the API's reason ("${missing.error.message}")`);
  check(await page.locator('#model option').count() === 0, 'nothing loads without the key');
  await page.fill('#key-input', 'not-the-key');
  await page.keyboard.press('Enter');
  const wrong = await (await fetch(`${url}/v1/models`, { headers: { Authorization: 'Bearer not-the-key' } })).json();
  await page.locator('#key-error', { hasText: wrong.error.message }).waitFor();
  check(await dialog.isVisible(), `a wrong key shows the API's error: "${wrong.error.message}"`);
  await page.fill('#key-input', key);
  await page.click('#key-save');
  await dialog.waitFor({ state: 'hidden' });
  await page.locator('#model option[value="sorrel-toyworld"]').waitFor({ state: 'attached' });
  check(true, 'the right key closes the dialog and the models load');
  await page.reload();
  await page.locator('#model option[value="sorrel-toyworld"]').waitFor({ state: 'attached' });
  check(!(await dialog.isVisible()), 'after a reload the key is remembered (no dialog)');
  await page.fill('#prompt', PROMPT);
  await page.click('#generate');
  await newestCard(page).locator('.badge', { hasText: /^✔ Content credentials: trusted/ }).waitFor({ timeout: 60_000 });
  check(true, 'with the key a video is made, and its credentials (read with the key) are trusted');
  await context.close();
}

const dir = mkdtempSync(join(tmpdir(), 'sorrel-studio-'));
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--no-sandbox', '--autoplay-policy=no-user-gesture-required', '--mute-audio'],
});
let failed = false;
try {
  await studioWithoutKeys(browser, dir);
  await films(browser, dir);
  await reconnects(browser, dir);
  await withKeys(browser, dir);
} catch (e) {
  failed = true;
  console.error(e.stack || e);
} finally {
  await browser.close();
  servers.forEach((p) => p.kill('SIGKILL'));
  rmSync(dir, { recursive: true, force: true });
}
writeFileSync(1, failed ? 'STUDIO FAILED\n' : 'STUDIO PASSED\n');
process.exit(failed ? 1 : 0);
