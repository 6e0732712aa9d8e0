"""One Runner interface over every inference runtime.

A Runner turns a float32 NCHW `pixel_values` batch (the project's own preprocessing) into
float32 logits. Validators, the server and the benchmarks only ever talk to this interface,
so a new runtime is one new module registered in `base.py`, not a special case elsewhere.
"""

from vitgender.runtimes.base import (Runner, RunnerInfo, Runtime, open_runner, register_runtime, runner_input,
                                     runtime_for, runtime_names)

__all__ = ["Runner", "RunnerInfo", "Runtime", "open_runner", "register_runtime", "runner_input", "runtime_for",
           "runtime_names"]
