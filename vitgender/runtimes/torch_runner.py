"""PyTorch eager runtime: the parity reference every exported artifact is compared with."""

from __future__ import annotations

import os

import numpy as np
import torch

from vitgender import checkpoint
from vitgender.runtimes.base import RunnerInfo
from vitgender.runtimes.lifecycle import Closing


class TorchRunner(Closing):
    def __init__(self, model: torch.nn.Module, info: RunnerInfo, threads: int | None = None) -> None:
        self.model = model
        self.info = info
        if threads:
            torch.set_num_threads(threads)

    @classmethod
    def open(
        cls, source: str | os.PathLike | None, *, allow_pickle: bool = False, threads: int | None = None
    ) -> TorchRunner:
        ckpt = checkpoint.open_checkpoint(source, allow_pickle=allow_pickle)
        info = RunnerInfo("torch", ckpt.labels, ckpt.preprocess, str(ckpt.directory), architecture=ckpt.architecture)
        runner = cls(ckpt.load_model(), info, threads)
        runner._stages = ckpt.model.stages(ckpt.architecture.num_hidden_layers, ckpt.config)
        return runner

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model(pixel_values=torch.from_numpy(np.ascontiguousarray(pixel_values))).logits
        return logits.float().numpy()

    def op_times(self, inputs: np.ndarray, runs: int) -> list[tuple[str, float]]:
        """(aten op, self CPU seconds) from torch.profiler (`profiling.torch_op_times`)."""
        from vitgender.runtimes.profiling import torch_op_times

        return torch_op_times(self.run, inputs, runs)

    def stage_activations(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Every stage its model type names (`vitgender.models`), captured with forward hooks, then the logits."""
        captured: dict[str, np.ndarray] = {}
        handles = []
        for name, path in self._stages:
            module = self.model.get_submodule(path)

            def hook(_module, _inputs, output, name=name):
                tensor = output[0] if isinstance(output, tuple) else output
                captured[name] = tensor.detach().float().numpy()

            handles.append(module.register_forward_hook(hook))
        try:
            with torch.inference_mode():
                logits = self.model(pixel_values=torch.from_numpy(np.ascontiguousarray(pixels))).logits
        finally:
            for handle in handles:
                handle.remove()
        return {**captured, "logits": logits.float().numpy()}
