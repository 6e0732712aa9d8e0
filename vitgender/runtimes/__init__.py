"""One Runner interface over every inference runtime.

A Runner turns a float32 NCHW `pixel_values` batch (the project's own preprocessing) into
float32 logits. Validators, the server and the benchmarks only ever talk to this interface,
so a new format is one new module registered here, not a special case elsewhere.
"""

from vitgender.runtimes.base import Runner, RunnerInfo, open_runner, register_runtime, runner_input, runtime_for, runtime_names

__all__ = ["Runner", "RunnerInfo", "open_runner", "register_runtime", "runner_input", "runtime_for", "runtime_names"]
