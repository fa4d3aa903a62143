// Browser test of kubetrail's HTML report: opens report files in Debian's headless Chromium
// (driven by playwright-core, never a bundled browser) and checks what a person would see.
// Run by crates/kubetrail/tests/html_report.rs, which builds the reports and passes a JSON
// spec file as the only argument:
//   { "modules": DIR with node_modules (from scripts/install-browser-test.sh),
//     "screenshot": PATH or null,
//     "reports": [ { "name", "path", "families": N, "root": REF, "rows": N, "requests": N,
//                    "click": { "row": REF, "bar": TEXT in the bar's title, "diff": [TEXT…] },
//                    "searches": [ { "query": Q, "rows": [REF…] (rows that must stay), "bars": TEXT every bar title has,
//                                    "maxRows": N (rows left at most) } ],
//                    "scrollTo": REF (a row far down: scrolled to, must be drawn) } ] }
// Prints one JSON line of measurements; exits non-zero (with the reason) on any failure.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import assert from "node:assert/strict";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const require = createRequire(spec.modules + "/package.json");
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  // What works on these machines (no network: background services must not try to connect).
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const results = [];
try {
  for (const r of spec.reports) results.push(await check(r));
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok: true, results }));

async function check(r) {
  const context = await browser.newContext({ viewport: { width: 1440, height: 860 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const errors = [];
  const fetched = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("request", (q) => fetched.push(q.url()));
  const url = pathToFileURL(r.path).href;
  const t0 = Date.now();
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector("html[data-ready='1']");
  const loadMs = Date.now() - t0;
  const info = await page.evaluate(() => {
    const k = window.kubetrailReport;
    const nav = performance.getEntriesByType("navigation")[0];
    return { firstRenderMs: k.firstRenderMs, families: k.families, rows: k.rows, requests: k.requests,
      domContentLoadedMs: nav ? nav.domContentLoadedEventEnd : null };
  });
  const where = `${r.name}:`;

  // Landing view: the family list with counts.
  const famRows = page.locator("#families tbody tr[data-f]");
  assert.equal(await famRows.count(), r.families, `${where} families listed`);
  assert.equal(info.rows, r.rows, `${where} objects in the data`);
  assert.equal(info.requests, r.requests, `${where} requests in the data`);
  const rootRow = famRows.filter({ hasText: r.root });
  assert.equal(await rootRow.count(), 1, `${where} the family of ${r.root} is listed`);
  const cells = await rootRow.locator("td").allInnerTexts();
  assert.equal(cells[0], r.root);
  assert.ok(Number(cells[4].replace(/,/g, "")) > 0, `${where} the family has requests: ${cells}`);

  // The family's Gantt: rows in the owner chain, bars on them, only what is in view drawn.
  await rootRow.click();
  await page.waitForSelector("#family-view:not([hidden]) .row");
  const visibleRows = await page.evaluate(() => window.kubetrailReport.visibleRows());
  const drawnRows = await page.locator("#rows .row").count();
  const drawnBars = await page.locator("#rows .bar").count();
  assert.ok(drawnRows > 0 && drawnBars > 0, `${where} rows and bars are drawn (${drawnRows}, ${drawnBars})`);
  assert.ok(drawnRows <= 80, `${where} only the rows in view are in the page (${drawnRows} of ${visibleRows})`);
  const firstLabel = await page.locator("#rows .row .label").first().getAttribute("title");
  assert.equal(firstLabel, r.root, `${where} the top owner is the first row`);
  const axisTicks = await page.locator("#axis .tick").count();
  assert.ok(axisTicks >= 2, `${where} the time axis has ticks`);

  // Zoom in and out: the axis changes, the bars move.
  const tickBefore = await page.locator("#axis .tick").first().innerText();
  await page.click("#zoom-in");
  await page.click("#zoom-in");
  await page.waitForFunction((t) => document.querySelector("#axis .tick")?.innerText !== t, tickBefore);
  await page.click("#zoom-fit");

  // Collapse the top owner: only it stays; expand again.
  await page.locator("#rows .row").first().locator(".tog").click();
  assert.equal(await page.evaluate(() => window.kubetrailReport.visibleRows()), 1, `${where} collapsed to one row`);
  await page.locator("#rows .row").first().locator(".tog").click();
  assert.equal(await page.evaluate(() => window.kubetrailReport.visibleRows()), visibleRows, `${where} expanded again`);

  // Scroll far down: the rows there are drawn, and the page still holds only a window of rows.
  let scrollMs = null;
  if (r.scrollTo) {
    const t = Date.now();
    const v = await page.evaluate((ref) => window.kubetrailReport.scrollToRow(window.kubetrailReport.rowOf(ref)), r.scrollTo);
    assert.ok(v >= 0, `${where} ${r.scrollTo} is a row`);
    await page.waitForSelector(`#rows .row .label[title="${r.scrollTo}"]`);
    // Scroll through the whole list in steps, as a wheel would, timing each frame.
    scrollMs = await page.evaluate(async () => {
      const sc = document.getElementById("scroller");
      const frames = [];
      sc.scrollTop = 0;
      for (let y = 0; y < sc.scrollHeight; y += sc.clientHeight / 2) {
        const t0 = performance.now();
        sc.scrollTop = y;
        await new Promise((res) => requestAnimationFrame(() => requestAnimationFrame(res)));
        frames.push(performance.now() - t0);
      }
      frames.sort((a, b) => a - b);
      return { steps: frames.length, median: frames[frames.length >> 1], max: frames[frames.length - 1] };
    });
    scrollMs.jumpMs = Date.now() - t;
    assert.ok((await page.locator("#rows .row").count()) <= 80, `${where} still only a window of rows`);
    await page.evaluate(() => { document.getElementById("scroller").scrollTop = 0; });
  }

  // Click a request: its details, with the diff.
  let diffText = null;
  if (r.click) {
    await page.evaluate((ref) => window.kubetrailReport.scrollToRow(window.kubetrailReport.rowOf(ref)), r.click.row);
    const row = page.locator(`#rows .row:has(.label[title="${r.click.row}"])`);
    const bar = row.locator(`.bar[title*=${JSON.stringify(r.click.bar)}]`);
    assert.ok((await bar.count()) >= 1, `${where} a bar "${r.click.bar}" on ${r.click.row}`);
    // Bars may overlap at the zoom of the whole family: click this one, not what lies on top.
    await bar.first().dispatchEvent("click");
    await page.waitForSelector("#details:not([hidden]) #d-diff");
    diffText = await page.locator("#d-diff").innerText();
    for (const want of r.click.diff) assert.ok(diffText.includes(want), `${where} the diff shows ${want}: ${diffText}`);
    const detail = await page.locator("#details-body").innerText();
    for (const label of ["actor", "user", "user agent", "response code", "latency", "trace ID", "span ID"]) {
      assert.ok(detail.includes(label), `${where} details show ${label}`);
    }
    if (spec.screenshot && r.screenshot) await page.screenshot({ path: spec.screenshot });
    await page.click("#details-close");
  }

  // The search box narrows the rows and the bars.
  const searchMs = [];
  for (const q of r.searches || []) {
    const t = Date.now();
    await page.fill("#q", q.query);
    await page.press("#q", "Enter");
    await page.waitForFunction((want) => {
      const bars = [...document.querySelectorAll("#rows .bar")];
      return bars.length > 0 && bars.every((b) => b.title.includes(want));
    }, q.bars);
    searchMs.push(Date.now() - t);
    const left = await page.evaluate(() => window.kubetrailReport.visibleRows());
    assert.ok(left <= q.maxRows, `${where} "${q.query}" leaves at most ${q.maxRows} rows: ${left}`);
    const labels = await page.locator("#rows .row .label").evaluateAll((els) => els.map((e) => e.title));
    for (const want of q.rows) assert.ok(labels.includes(want), `${where} "${q.query}" keeps ${want}: ${labels}`);
    await page.fill("#q", "");
    await page.press("#q", "Enter");
    await page.waitForFunction((n) => window.kubetrailReport.visibleRows() === n, visibleRows);
  }

  // Filters: only errors leaves only marked bars.
  await page.check("#f-errors");
  const marked = await page.locator("#rows .bar").evaluateAll((els) => els.map((e) => e.className));
  for (const c of marked) assert.ok(/\b(err|warn)\b/.test(c), `${where} only errors and Warnings: ${c}`);
  await page.uncheck("#f-errors");

  assert.deepEqual(errors, [], `${where} no script errors`);
  const foreign = fetched.filter((u) => u !== url);
  assert.deepEqual(foreign, [], `${where} the page fetched nothing but itself`);
  await context.close();
  return { name: r.name, loadMs, ...info, visibleRows, drawnRows, drawnBars, scrollMs, searchMs, diffText };
}
