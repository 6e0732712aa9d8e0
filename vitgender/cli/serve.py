"""`vitgender serve`: the HF-compatible HTTP endpoint, in one process or on Ray Serve."""

from __future__ import annotations

from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import ALPHA_HELP, AlphaPolicy, MODEL_HELP, RUNTIME_HELP, TTA_HELP


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="MODEL", help=MODEL_HELP + " Or an artifact file."),
    runtime: Optional[str] = typer.Option(None, metavar="RUNTIME", help=RUNTIME_HELP),
    host: str = typer.Option("127.0.0.1", metavar="HOST", help="Interface to bind (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8080, metavar="PORT", min=1, max=65535),
    max_batch_size: int = typer.Option(16, metavar="N", min=1, help="Most images per Runner call."),
    max_wait_ms: float = typer.Option(5.0, metavar="MS", min=0, help="How long the first request of a batch waits for company."),
    max_queue: int = typer.Option(256, metavar="N", min=1, help="Images allowed to wait; beyond it requests get 429."),
    max_body_mb: float = typer.Option(2.0, metavar="MB", min=0.01, help="Largest accepted request body (413 above)."),
    threads: Optional[int] = typer.Option(None, metavar="N", min=1, help="Intra-op threads for the runtime."),
    tta: str = typer.Option("none", metavar="MODE", help=TTA_HELP),
    alpha: Optional[AlphaPolicy] = typer.Option(None, "--alpha", metavar="POLICY", help=ALPHA_HELP),
    detector: str = typer.Option("haar", metavar="NAME", help="Face detector for requests with parameters.faces = true (haar or blazeface)."),
    max_faces: int = typer.Option(20, metavar="N", min=1, help="Most faces classified per image in face-first requests."),
    ray: bool = typer.Option(False, "--ray", help="Deploy on Ray Serve with autoscaling instead of one process."),
    ray_address: Optional[str] = typer.Option(None, metavar="ADDRESS", help="Ray cluster address ('auto' to join a running cluster)."),
    min_replicas: int = typer.Option(1, metavar="N", min=0),
    max_replicas: int = typer.Option(4, metavar="N", min=1),
    target_ongoing_requests: float = typer.Option(4.0, metavar="X", min=0.1, help="Autoscaling target per replica."),
    access_log: bool = typer.Option(True, help="Log one line per request (uvicorn's access log) on stdout."),
) -> None:
    """Serve the model over an HTTP API compatible with the HF Inference API (image-classification)."""
    alpha = alpha.value if alpha is not None else None
    from vitgender.runtimes import runtime_for
    from vitgender.runtimes.tta import check_tta

    check_tta(tta)  # before the server starts: the model loads in the background
    chosen = runtime or runtime_for(model)
    max_body_bytes = int(max_body_mb * 1024 * 1024)
    if ray:
        from vitgender.serving.ray_app import RayServeOptions, run_ray_serve

        options = RayServeOptions(min_replicas=min_replicas, max_replicas=max_replicas,
                                  target_ongoing_requests=target_ongoing_requests, max_batch_size=max_batch_size,
                                  batch_wait_timeout_s=max_wait_ms / 1000, tta=tta, alpha=alpha)
        run_ray_serve(model, chosen, options, host=host, port=port, address=ray_address,
                      max_body_bytes=max_body_bytes, detector=detector, max_faces=max_faces,
                      announce=lambda line: typer.echo(line, err=True))
        return
    import uvicorn

    from vitgender.serving.app import ServeSettings, create_app

    settings = ServeSettings(model=model, runtime=chosen, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                             max_queue=max_queue, max_body_bytes=max_body_bytes, threads=threads, tta=tta,
                             detector=detector, max_faces=max_faces, alpha=alpha)

    def announce(line: str) -> None:
        typer.echo(f"vitgender serve: {line}", err=True)

    announce(f"http://{host}:{port}/ model={model or 'vitgender-default (embedded)'} runtime={chosen}; batching: "
             f"up to {max_batch_size} images, {max_wait_ms:g} ms wait, queue {max_queue}; body limit {max_body_mb:g} MB "
             "(Ctrl-C or SIGTERM to stop)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        announce(f"listening on {host}: reachable from other machines; put it behind a firewall or proxy")
    uvicorn.run(create_app(settings, announce=announce), host=host, port=port, timeout_graceful_shutdown=30,
                log_level="info" if access_log else "warning", access_log=access_log)
