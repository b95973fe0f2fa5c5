"""`entrep serve`: the local web page and HTTP API for a fitted model."""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path
from typing import Optional

import typer

from entrep.cli.app import app, console
from entrep.cli.commands.model import RUNTIME_HELP, Runtime
from entrep.errors import UserError

log = logging.getLogger(__name__)


def _check_port_free(host: str, port: int) -> None:
    """One clear line when the address cannot be bound, instead of a uvicorn traceback."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is already in use; pick another with --port") from None
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); check --host and --port") from None


@app.command("serve")
def serve_cmd(
    model: Path = typer.Option(..., "--model", help="Model folder from `entrep fit` or `entrep demo`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Keep 127.0.0.1 (this computer "
                                                           "only) unless the network is trusted."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    hide_names: bool = typer.Option(False, "--hide-names", help="Never show gallery file names or paths "
                                                                "(raw hospital names can carry patient ids)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.01, help="Largest image upload accepted, in MB."),
    report: Optional[Path] = typer.Option(None, "--report", help="Folder holding the report.html to link "
                                                                 "(default: MODEL/report, as `entrep demo` leaves it)."),
    allow_host: list[str] = typer.Option([], "--allow-host", help="Also answer requests addressed to this host "
                                                                   "name (repeatable), e.g. the machine's LAN name. "
                                                                   "The bind address and its loopback names are "
                                                                   "always answered; '*' answers any (unsafe)."),
    max_concurrent: int = typer.Option(2, "--max-concurrent", min=1, help="Requests decoding or running the model "
                                                                          "at once (bounds memory); others queue, "
                                                                          "then get 503."),
    runtime: Optional[Runtime] = typer.Option(None, "--runtime", envvar="ENTREP_RUNTIME", help=RUNTIME_HELP.format(what="model")),
) -> None:
    """Serve the search page and HTTP API (http://HOST:PORT/, API reference at /docs)."""
    import uvicorn

    from entrep.server.app import create_app, is_loopback

    loopback = is_loopback(host)
    _check_port_free(host, port)
    console.print(f"loading model {model} ...", highlight=False)
    if report is not None and not (report / "report.html").is_file():
        raise UserError(f"{report}: no report.html in this folder; give the folder `entrep evaluate --report` wrote")
    import entrep

    web = create_app(entrep.load(model, runtime=runtime), hide_names=hide_names, max_upload_bytes=int(max_upload_mb * 1024 * 1024), report_dir=report,
                     host=host, allow_hosts=tuple(allow_host), max_concurrent=max_concurrent,
                     warmup=True)
    state = web.state.entrep
    if not loopback:
        console.print(
            f"[bold red]WARNING: listening on {host}, not on this computer only.[/bold red] Anyone who can reach "
            f"this machine on port {port} can upload images and browse the gallery"
            f"{'' if hide_names else ', including its file names (use --hide-names)'}. There is no login and no "
            "encryption: use --host 127.0.0.1 unless this network is trusted.",
            highlight=False, soft_wrap=True,
        )
        log.warning("entrep serve is listening on non-loopback address %s:%d", host, port)
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    console.print(
        f"serving {state.taxonomy.n_classes} classes, {state.gallery_size} gallery images"
        f"{', report' if state.has_report else ''} on [bold]http://{shown}:{port}/[/bold] "
        f"(API reference: http://{shown}:{port}/docs); press Ctrl+C to stop",
        highlight=False, soft_wrap=True,
    )
    uvicorn.run(web, host=host.strip("[]"), port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
