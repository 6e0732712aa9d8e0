// Run an exported ONNX in headless Chromium with onnxruntime-web (WASM) on pixel values the
// Python side preprocessed, and print the logits as JSON (the Python test compares them with
// PyTorch under validate's budgets). Also drives the demo's file input once.
// Usage: node browser-test.mjs <export-dir>/web <variant> <pixels.f32> <n> [image-for-demo]
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";
import { startServer } from "./serve.mjs";

const [modelDir, variant, pixelsFile, n, demoImage] = process.argv.slice(2);
const server = await startServer(modelDir);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  await page.goto(`http://127.0.0.1:${server.address().port}/index.html?variant=${variant}`);
  const info = await page.evaluate(() => window.ready);
  const pixels = Array.from(new Float32Array(readFileSync(pixelsFile).buffer.slice(0)));
  const logits = await page.evaluate(([data, count]) => window.vitgender.logits(data, count), [pixels, Number(n)]);
  let demo = null;
  if (demoImage) {
    await page.setInputFiles("#file", demoImage);
    await page.waitForSelector("#result[data-status=done]", { timeout: 30000 });
    demo = await page.$$eval(".score", els => els.map(e => ({ label: e.dataset.label, score: Number(e.textContent) })));
  }
  console.log(JSON.stringify({ labels: info.labels, logits, demo, errors }));
} finally {
  await browser.close();
  server.close();
}
