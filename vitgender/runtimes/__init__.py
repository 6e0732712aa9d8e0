"""One Runner interface over every inference runtime.

A Runner turns a float32 NCHW `pixel_values` batch (the project's own preprocessing) into
float32 logits. Validators, the server and the benchmarks only ever talk to this interface and
to the capabilities each `Runtime` declares, so a new runtime is one new module and one
`register_runtime` call, not a special case elsewhere.
"""

from vitgender.runtimes.base import (
    Runner,
    RunnerInfo,
    Runtime,
    can_localize,
    check_runtime_spec,
    default_threads,
    file_inventory,
    get_runtime,
    open_runner,
    parse_runtime,
    peer_runtimes,
    read_metadata,
    register_runtime,
    runner_input,
    runtime_for,
    runtime_help,
    runtime_names,
    setting_runtimes,
)
from vitgender.runtimes.lifecycle import Closing

__all__ = [
    "Closing",
    "Runner",
    "RunnerInfo",
    "Runtime",
    "can_localize",
    "check_runtime_spec",
    "default_threads",
    "file_inventory",
    "get_runtime",
    "open_runner",
    "parse_runtime",
    "peer_runtimes",
    "read_metadata",
    "register_runtime",
    "runner_input",
    "runtime_for",
    "runtime_help",
    "runtime_names",
    "setting_runtimes",
]
