// Classify images with an exported vitgender model through transformers.js, fully offline.
// Usage: node classify-node.mjs <export-dir>/web <fp32|q8|fp16> <image>...
// Prints one JSON line per image: {"image", "predictions": [{"label", "score"}, ...]}.
import path from "node:path";
import { env, pipeline } from "@huggingface/transformers";

const [modelDir, dtype, ...images] = process.argv.slice(2);
if (!modelDir || !dtype || images.length === 0) {
  console.error("usage: node classify-node.mjs <web-dir> <fp32|q8|fp16> <image>...");
  process.exit(2);
}
env.allowRemoteModels = false; // never reach for the hub: local files only
env.allowLocalModels = true;
env.localModelPath = path.dirname(path.resolve(modelDir));
const classifier = await pipeline("image-classification", path.basename(path.resolve(modelDir)), { dtype, device: "cpu" });
for (const image of images) {
  const predictions = await classifier(path.resolve(image), { top_k: Object.keys(classifier.model.config.id2label).length });
  console.log(JSON.stringify({ image, predictions }));
}
