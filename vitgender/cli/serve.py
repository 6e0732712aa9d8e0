"""`vitgender serve`: the HF-compatible HTTP endpoint, in one process or on Ray Serve."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import ALPHA_HELP, MODEL_HELP, RUNTIME_HELP, TTA_HELP, AlphaPolicy
from vitgender.errors import UsageError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
def serve(
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        metavar="MODEL",
        help=MODEL_HELP + " Or an artifact file. Or auto: the fastest artifact of --artifacts that passed the "
        "parity gate batch-invariantly, by its saved bench results (DIR/bench.json).",
    ),
    runtime: Optional[str] = typer.Option(None, metavar="RUNTIME", help=RUNTIME_HELP),
    artifacts: Optional[Path] = typer.Option(
        None, metavar="DIR", help="With --model auto: the export folder to choose from."
    ),
    host: str = typer.Option(
        "127.0.0.1",
        metavar="HOST",
        help="Interface to bind. Any address but loopback needs "
        "--api-key-file (or $VITGENDER_API_KEYS) or an explicit --no-auth.",
    ),
    port: int = typer.Option(8080, metavar="PORT", min=1, max=65535),
    api_key_file: Optional[Path] = typer.Option(
        None,
        metavar="FILE",
        help="Accepted API keys, one per line ('#' "
        "comments); clients send 'Authorization: Bearer KEY'. Also read "
        "from $VITGENDER_API_KEYS. SIGHUP re-reads the file.",
    ),
    no_auth: bool = typer.Option(
        False,
        "--no-auth",
        help="Serve without keys on a non-loopback address " "(e.g. behind a proxy that authenticates).",
    ),
    public_metrics: bool = typer.Option(False, "--public-metrics", help="Let /metrics be read without a key."),
    rate_limit: Optional[str] = typer.Option(
        None,
        metavar="RATE",
        help="Requests per caller (per key, or per "
        "client address without auth), e.g. 10/s or 600/min; beyond it 429 "
        "with Retry-After. Bursts of up to one second's worth pass.",
    ),
    ssl_certfile: Optional[Path] = typer.Option(None, metavar="PEM", help="TLS certificate chain (serve HTTPS)."),
    ssl_keyfile: Optional[Path] = typer.Option(None, metavar="PEM", help="TLS private key for --ssl-certfile."),
    max_batch_size: int = typer.Option(16, metavar="N", min=1, help="Most images per Runner call."),
    max_wait_ms: float = typer.Option(
        5.0, metavar="MS", min=0, help="How long the first request of a batch waits for company."
    ),
    max_queue: int = typer.Option(
        256,
        metavar="N",
        min=1,
        help="Images allowed to wait; beyond it requests get 429 "
        "(with --ray: requests queued per deployment handle; Ray answers 503 beyond it).",
    ),
    max_body_mb: float = typer.Option(2.0, metavar="MB", min=0.01, help="Largest accepted request body (413 above)."),
    body_timeout: float = typer.Option(
        30.0, metavar="S", min=0.1, help="Time allowed to receive a request body (408 after)."
    ),
    header_timeout: Optional[float] = typer.Option(
        None,
        metavar="S",
        min=0.1,
        help="Time allowed to receive a " "request's line and headers before the connection is closed [default: 10].",
    ),
    keep_alive: int = typer.Option(5, metavar="S", min=1, help="Idle keep-alive connections are closed after this."),
    max_header_kb: Optional[int] = typer.Option(
        None, metavar="KB", min=1, help="Largest request head (line + headers; " "400 above) [default: 16]."
    ),
    max_connections: Optional[int] = typer.Option(
        None,
        metavar="N",
        min=1,
        help="Open connections + requests " "beyond which new requests get 503 [default: 1000].",
    ),
    max_connections_per_client: Optional[int] = typer.Option(
        None,
        metavar="N",
        min=0,
        help="Open connections one " "client address may hold; 0: no cap (behind a proxy) [default: 100].",
    ),
    threads: Optional[int] = typer.Option(
        None, metavar="N", min=1, help="Intra-op threads for the runtime (per replica with --ray)."
    ),
    tta: str = typer.Option("none", metavar="MODE", help=TTA_HELP),
    alpha: Optional[AlphaPolicy] = typer.Option(None, "--alpha", metavar="POLICY", help=ALPHA_HELP),
    detector: str = typer.Option(
        "haar", metavar="NAME", help="Face detector for requests with parameters.faces = true (haar or blazeface)."
    ),
    max_faces: int = typer.Option(
        20, metavar="N", min=1, help="Most faces classified per image in face-first requests."
    ),
    ray: bool = typer.Option(False, "--ray", help="Deploy on Ray Serve with autoscaling instead of one process."),
    ray_address: Optional[str] = typer.Option(
        None, metavar="ADDRESS", help="Ray cluster address ('auto' to join a running cluster)."
    ),
    min_replicas: int = typer.Option(1, metavar="N", min=0),
    max_replicas: int = typer.Option(4, metavar="N", min=1),
    target_ongoing_requests: float = typer.Option(4.0, metavar="X", min=0.1, help="Autoscaling target per replica."),
    access_log: bool = typer.Option(
        True,
        help="Log one line per request on stdout, with the caller's key id "
        "(a short hash, never the key); with --ray, in the replicas' logs.",
    ),
) -> None:
    """Serve the model over an HTTP API compatible with the HF Inference API (image-classification)."""
    alpha = alpha.value if alpha is not None else None
    from vitgender.runtimes import runtime_for
    from vitgender.runtimes.tta import check_tta
    from vitgender.serving.auth import key_id, parse_rate, read_keys
    from vitgender.serving.limits import ConnectionLimits

    check_tta(tta)  # before the server starts: the model loads in the background
    per_second = parse_rate(rate_limit) if rate_limit else None
    digests = read_keys(api_key_file)
    if digests and no_auth:
        raise UsageError("--no-auth", "contradicts the keys given (--api-key-file or $VITGENDER_API_KEYS); drop one")
    if not digests and not no_auth and host not in LOOPBACK:
        raise UsageError(
            "serve",
            f"refusing to serve on {host} without keys: anyone who reaches the port could use it; "
            "pass --api-key-file FILE (or set $VITGENDER_API_KEYS), or --no-auth if a proxy in front "
            "authenticates",
        )
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise UsageError("--ssl-certfile, --ssl-keyfile", "the two go together")
    for pem in (ssl_certfile, ssl_keyfile):
        if pem is not None and not pem.is_file():
            raise UsageError(f"cannot read '{pem}'", "no such file")
    if model == "auto":
        model, runtime = _auto(artifacts, runtime, max_batch_size, announce=lambda line: typer.echo(line, err=True))
    elif artifacts is not None:
        raise UsageError("--artifacts", "only with --model auto")
    chosen = runtime or runtime_for(model)
    max_body_bytes = int(max_body_mb * 1024 * 1024)
    scheme = "https" if ssl_certfile else "http"

    def announce(line: str) -> None:
        typer.echo(f"vitgender serve: {line}", err=True)

    auth_line = (
        f"auth: {len(digests)} key(s), ids {', '.join(sorted(key_id(d) for d in digests))}"
        + ("; /metrics is public" if public_metrics else "")
        if digests
        else "auth: off (no keys)"
    )
    if per_second:
        auth_line += f"; rate limit {per_second:g} requests/s per {'key' if digests else 'client address'}"
    if ray:
        guarded = {
            "--rate-limit": rate_limit,
            "--header-timeout": header_timeout,
            "--max-header-kb": max_header_kb,
            "--max-connections": max_connections,
            "--max-connections-per-client": max_connections_per_client,
        }
        refused = [name for name, value in guarded.items() if value is not None]
        if refused:
            raise UsageError(
                ", ".join(refused),
                "not available with --ray (Ray Serve's HTTP proxy has no such "
                "limit; a rate limit per replica would multiply with the replica count); put a reverse "
                "proxy in front, see docs/serving.md",
            )
        from vitgender.serving.ray_app import RayServeOptions, run_ray_serve

        options = RayServeOptions(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            target_ongoing_requests=target_ongoing_requests,
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=max_wait_ms / 1000,
            tta=tta,
            alpha=alpha,
            threads=threads,
            max_queued_requests=max_queue,
            access_log=access_log,
            public_metrics=public_metrics,
            body_timeout_s=body_timeout,
            keep_alive_s=keep_alive,
        )
        announce(auth_line)
        run_ray_serve(
            model,
            chosen,
            options,
            host=host,
            port=port,
            address=ray_address,
            max_body_bytes=max_body_bytes,
            detector=detector,
            max_faces=max_faces,
            key_file=api_key_file,
            digests=digests,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            announce=lambda line: typer.echo(line, err=True),
        )
        return
    import uvicorn

    from vitgender.serving.app import ServeSettings, create_app, enable_access_log
    from vitgender.serving.auth import Gate, KeyRing, RateLimiter

    defaults = ConnectionLimits()
    limits = ConnectionLimits(
        header_timeout_s=header_timeout or defaults.header_timeout_s,
        body_timeout_s=body_timeout,
        keep_alive_s=keep_alive,
        max_header_bytes=max_header_kb * 1024 if max_header_kb else defaults.max_header_bytes,
        max_connections=max_connections or defaults.max_connections,
        max_connections_per_client=defaults.max_connections_per_client
        if max_connections_per_client is None
        else max_connections_per_client,
    )
    settings = ServeSettings(
        model=model,
        runtime=chosen,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_body_bytes=max_body_bytes,
        threads=threads,
        tta=tta,
        detector=detector,
        max_faces=max_faces,
        alpha=alpha,
        body_timeout_s=body_timeout,
        max_header_bytes=limits.max_header_bytes,
    )
    keys = KeyRing(digests)
    gate = Gate(keys, RateLimiter(per_second) if per_second else None, public_metrics=public_metrics)

    def reload_keys(*_) -> None:
        if not keys.enabled:
            announce("SIGHUP: auth is off, no keys to reload")
            return
        try:
            keys.replace(read_keys(api_key_file))
            announce(f"SIGHUP: reloaded {len(keys)} key(s)")
        except UsageError as exc:
            announce(f"SIGHUP: keeping the {len(keys)} key(s) loaded before: {exc}")

    announce(
        f"{scheme}://{host}:{port}/ model={model or 'vitgender-default (embedded)'} runtime={chosen}; batching: "
        f"up to {max_batch_size} images, {max_wait_ms:g} ms wait, queue {max_queue}; body limit {max_body_mb:g} MB "
        "(Ctrl-C or SIGTERM to stop)"
    )
    announce(auth_line)
    if host not in LOOPBACK and not digests:
        announce(f"listening on {host} with --no-auth: anyone who reaches the port can use it")
    if access_log:
        enable_access_log()
    signal.signal(signal.SIGHUP, reload_keys)
    ssl = {"ssl_certfile": str(ssl_certfile), "ssl_keyfile": str(ssl_keyfile)} if ssl_certfile else {}
    uvicorn.run(
        create_app(settings, announce=announce, gate=gate),
        host=host,
        port=port,
        timeout_graceful_shutdown=30,
        log_level="info" if access_log else "warning",
        access_log=False,
        **limits.uvicorn_options(),
        **ssl,
    )


def _auto(artifacts: Optional[Path], runtime: Optional[str], max_batch_size: int, announce) -> tuple[str, str]:
    """`--model auto`: the artifact and runtime `vitgender.serving.auto` chooses, and why (one line)."""
    from vitgender.machine import machine
    from vitgender.serving.auto import BENCH_FILE, choose

    if artifacts is None:
        raise UsageError("--model auto", "give --artifacts DIR, an export folder with its bench and validation results")
    if runtime is not None:
        raise UsageError("--runtime", "--model auto chooses the runtime too; drop one")
    choice = choose(artifacts, max_batch_size)
    announce(
        f"vitgender serve: auto: {choice.name} on {choice.runtime} ({choice.images_per_s:.1f} images/s at batch "
        f"{choice.batch_size} in {artifacts / BENCH_FILE}; passed the gate batch-invariantly in {choice.report})"
    )
    here = machine()["isa"]
    if choice.machine.get("isa") not in (None, here):
        announce(
            "vitgender serve: auto: note: the bench ran on a CPU with other ISA flags "
            f"({' '.join(choice.machine['isa'])}); bench again here to rank for this machine"
        )
    return str(choice.path), choice.runtime
