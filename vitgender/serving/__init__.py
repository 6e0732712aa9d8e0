"""HTTP serving: HF-Inference-API-compatible app, dynamic batcher, Ray Serve deployment."""
