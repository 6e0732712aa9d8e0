// A tiny static server for the demo: this folder at /, onnxruntime-web at /ort/, an export's web/ at /model/,
// and the page helpers shared with `vitgender serve`'s demo page at /static/.
// Usage: node serve.mjs <export-dir>/web [port]
import { createReadStream, existsSync, statSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
  ".wasm": "application/wasm", ".onnx": "application/octet-stream" };

export function startServer(modelDir, port = 0) {
  const roots = [["/ort/", path.join(here, "node_modules", "onnxruntime-web", "dist")],
                 ["/static/", path.join(here, "..", "vitgender", "serving", "static")],
                 ["/model/", path.resolve(modelDir)], ["/", here]];
  const server = createServer((req, res) => {
    const url = decodeURIComponent(new URL(req.url, "http://localhost").pathname);
    const [prefix, root] = roots.find(([p]) => url.startsWith(p));
    let file = path.join(root, url.slice(prefix.length) || "index.html");
    if (!file.startsWith(root) || !existsSync(file) || statSync(file).isDirectory()) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": TYPES[path.extname(file)] || "application/octet-stream" });
    createReadStream(file).pipe(res);
  });
  return new Promise(resolve => server.listen(port, "127.0.0.1", () => resolve(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const modelDir = process.argv[2] || "model";
  if (!existsSync(path.join(modelDir, "config.json")) || !existsSync(path.join(modelDir, "onnx"))) {
    console.error(`serve.mjs: ${modelDir} is not an export's web/ folder (expected config.json and onnx/ in it); ` +
      "create one with: vitgender export --formats web");
    process.exit(2);
  }
  const server = await startServer(modelDir, Number(process.argv[3] || 8000));
  console.log(`open http://127.0.0.1:${server.address().port}/index.html`);
}
