#!/usr/bin/env node
// Loads every http-oddities case in real Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core) and prints one JSON line per case:
//   {"id":…, "port":…, "status":…, "body_b64":…}            the page got a body
//   {"id":…, "port":…, "status":…|null, "error":"net::ERR_…"} the load failed
// Extra fields: "raw_status" (status code the network stack saw, from CDP),
// "download": true (Chromium turned the response into a download, e.g. a
// binary body; the body is the downloaded file), "note" (a 204/205/304
// navigation, which Chromium never commits: recorded as an empty body),
// "partial_text" (text a committed page showed before its load failed),
// "net_error" (CDP's error when it differs from the page's), "partial_b64"
// (what a failed download had written).
//
//   node oracle.mjs --server 10.77.0.1 [--cases id,id,…] [--dir DIR] [--timeout MS]
//                   [--payload clean|eicar] [--executable /usr/bin/chromium]
//
// Each case gets a fresh browser context (so a fresh socket pool: no
// connection reuse between cases).  The main-frame navigation is observed
// directly: page.goto()'s response, the `requestfailed` event of the
// navigation request, and the `download` event.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const a = {
    server: '10.77.0.1',
    dir: path.resolve(here, '../data/http-oddities'),
    cases: null,
    timeout: 10000,
    payload: 'clean',
    executable: '/usr/bin/chromium',
  };
  for (let i = 2; i < argv.length; i++) {
    const k = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) throw new Error(`${k} needs a value`);
      return argv[++i];
    };
    if (k === '--server') a.server = v();
    else if (k === '--dir') a.dir = path.resolve(v());
    else if (k === '--cases') a.cases = v().split(',').map((s) => s.trim()).filter(Boolean);
    else if (k === '--timeout') a.timeout = Number(v());
    else if (k === '--payload') a.payload = v();
    else if (k === '--executable') a.executable = v();
    else if (k === '-h' || k === '--help') {
      console.log('usage: node oracle.mjs --server ADDR [--cases id,id,...] [--dir DIR] [--timeout MS] [--payload clean|eicar]');
      process.exit(0);
    } else throw new Error(`unknown argument ${k}`);
  }
  return a;
}

// Minimal reader for expected.toml as written in this corpus: [table] headers
// and `key = value` lines whose value is a basic string, integer or boolean.
export function readExpected(file) {
  const out = {};
  let cur = null;
  for (const raw of fs.readFileSync(file, 'utf8').split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    let m = line.match(/^\[([A-Za-z0-9_-]+)\]$/);
    if (m) {
      cur = out[m[1]] = {};
      continue;
    }
    m = line.match(/^([A-Za-z0-9_-]+)\s*=\s*(.*)$/);
    if (!m || !cur) throw new Error(`cannot parse line in ${file}: ${raw}`);
    const [, key, val] = m;
    if (val.startsWith('"')) cur[key] = JSON.parse(val); // TOML basic-string escapes are JSON's
    else if (val === 'true' || val === 'false') cur[key] = val === 'true';
    else if (/^-?\d+$/.test(val)) cur[key] = Number(val);
    else throw new Error(`unsupported value in ${file}: ${raw}`);
  }
  return out;
}

function netError(text) {
  const m = String(text || '').match(/net::ERR_[A-Z0-9_]+/);
  return m ? m[0] : null;
}

async function runCase(browser, id, meta, args) {
  const host = args.server.includes(':') ? `[${args.server}]` : args.server;
  const url = `http://${host}:${meta.port}/case/${id}?v=${args.payload}`;
  const rec = { id, port: meta.port, url };
  const context = await browser.newContext({ acceptDownloads: true });
  try {
    const page = await context.newPage();
    let navFailure = null;
    let download = null;
    let lastNavResponse = null;
    let settle;
    const settled = new Promise((resolve) => { settle = resolve; });
    page.on('download', (d) => {
      download = d;
      settle('download');
    });
    page.on('requestfailed', (req) => {
      if (req.isNavigationRequest() && req.frame() === page.mainFrame()) {
        navFailure = req.failure()?.errorText || 'failed';
        settle('requestfailed');
      }
    });
    // Raw status lines as the network stack saw them (also for responses
    // Chromium never surfaces to the page, such as a 304 navigation).
    const rawStatuses = [];
    const cdp = await context.newCDPSession(page);
    cdp.on('Network.responseReceivedExtraInfo', (ev) => rawStatuses.push(ev.statusCode));
    const cdpFailures = [];
    cdp.on('Network.loadingFailed', (ev) => {
      if (ev.type === 'Document') cdpFailures.push(ev.errorText);
    });
    await cdp.send('Network.enable');
    page.on('response', (r) => {
      const req = r.request();
      if (req.isNavigationRequest() && req.frame() === page.mainFrame()) lastNavResponse = r;
    });

    // goto() resolves at `load`; a navigation whose body fails after commit
    // may never reach `load`, so also stop as soon as the navigation request
    // fails or turns into a download.
    let gotoError = null;
    let resp = null;
    const nav = page.goto(url, { timeout: args.timeout, waitUntil: 'load' }).then(
      (r) => { resp = r; },
      (e) => { gotoError = e.message.split('\n')[0]; },
    );
    await Promise.race([nav, settled]);
    // Let late `requestfailed` / `download` events arrive: a response that
    // becomes a download first fails the navigation with net::ERR_ABORTED.
    await new Promise((r) => setTimeout(r, 300));
    if (!download && navFailure && netError(navFailure) === 'net::ERR_ABORTED') {
      await Promise.race([
        new Promise((r) => page.once('download', r)),
        new Promise((r) => setTimeout(r, 2000)),
      ]);
    }
    resp = resp || lastNavResponse;
    rec.status = resp ? resp.status() : null;
    if (rawStatuses.length) rec.raw_status = rawStatuses[rawStatuses.length - 1];

    if (download) {
      rec.download = true;
      let failure = null;
      let file = null;
      try {
        file = await download.path();
        failure = await download.failure();
      } catch (e) {
        failure = e.message.split('\n')[0];
      }
      if (failure) {
        rec.error = netError(failure) || `download failed: ${failure}`;
        if (file && fs.existsSync(file)) rec.partial_b64 = fs.readFileSync(file).toString('base64');
      } else {
        rec.body_b64 = fs.readFileSync(file).toString('base64');
      }
      return rec;
    }

    let body = null;
    let bodyError = null;
    if (resp) {
      try {
        body = await resp.body();
      } catch (e) {
        bodyError = e.message.split('\n')[0];
      }
    }
    const err = navFailure || gotoError;
    const st = rec.status ?? rec.raw_status;
    if (err && netError(err) === 'net::ERR_ABORTED' && [204, 205, 304].includes(st)) {
      // Chromium never commits a navigation to a 204/205/304 response: it
      // keeps the current page and reports net::ERR_ABORTED.  The response
      // itself was accepted and has no body.
      rec.body_b64 = '';
      rec.note = `navigation not committed after status ${st} (net::ERR_ABORTED)`;
    } else if (err) {
      rec.error = netError(err) || err;
      // The network stack's own error, when the page saw a different one.
      const netErr = cdpFailures.map(netError).find((x) => x && x !== rec.error);
      if (netErr) rec.net_error = netErr;
      if (resp) {
        // If the document committed before the failure, note the text it
        // shows (not for Chromium's own error page).  Informational only.
        const shown = await Promise.race([
          page.evaluate(() => ({ href: location.href, text: document.body ? document.body.innerText : '' }))
            .catch(() => null),
          new Promise((r) => setTimeout(() => r(null), 2000)),
        ]);
        if (shown && !shown.href.startsWith('chrome-error:') && shown.text) rec.partial_text = shown.text;
      }
      if (gotoError && navFailure && gotoError !== navFailure) rec.goto_error = gotoError;
    } else if (body !== null) {
      rec.body_b64 = body.toString('base64');
    } else {
      rec.error = bodyError ? `no body: ${bodyError}` : 'no response';
    }
    return rec;
  } finally {
    await context.close().catch(() => {});
  }
}

async function main() {
  const args = parseArgs(process.argv);
  const expected = readExpected(path.join(args.dir, 'expected.toml'));
  const ids = args.cases || Object.keys(expected);
  for (const id of ids) if (!expected[id]) throw new Error(`no such case: ${id}`);
  const browser = await chromium.launch({
    executablePath: args.executable,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // No --user-data-dir here: playwright-core refuses it for launch() and
      // always starts Chromium with a fresh temporary profile of its own.
    ],
  });
  try {
    process.stderr.write(`chromium ${browser.version()}\n`);
    for (const id of ids) {
      let rec;
      try {
        rec = await runCase(browser, id, expected[id], args);
      } catch (e) {
        rec = { id, port: expected[id].port, error: `oracle failure: ${e.message.split('\n')[0]}` };
      }
      process.stdout.write(JSON.stringify(rec) + '\n');
    }
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
