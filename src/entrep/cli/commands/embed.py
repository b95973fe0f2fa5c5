"""CLI: ``entrep embed`` (export embeddings) and ``entrep encoders`` (list registered encoders)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from entrep.cli.app import app, console
from entrep.cli.commands.model import RUNTIME_HELP, Runtime


@app.command("embed")
def embed_cmd(
    data: Path = typer.Argument(..., help="ENTRep folder, data.json, class folders or a JSONL manifest."),
    out: Path = typer.Option(..., "--out", "-o", help="A folder (resumable Parquet shards + manifest.json), or one .npz (.parquet) file."),
    profile: str = typer.Option("offline", "--profile", "-p", help="offline, paper, or a profile .yaml/.json file."),
    view: str = typer.Option("orig", "--view", help="orig, flip, augK or augK-flip."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Feature cache folder (default $ENTREP_CACHE or ~/.cache/entrep/features)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Images per batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Data actor pool); folder --out only."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join this Ray cluster (e.g. ray://head:10001 or auto); default: start Ray here."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray actors (default: one per GPU, else per CPU)."),
    shard_rows: int = typer.Option(1024, "--shard-rows", min=1, help="Rows per shard (a killed run loses at most the shards in flight)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Embed with this model's (possibly fine-tuned) encoders, for `index --embeddings`."),
    flips: bool = typer.Option(False, "--flips", help="Also store flipped head features (flip TTA when `index` predicts missing labels)."),
    runtime: Optional[Runtime] = typer.Option(None, "--runtime", envvar="ENTREP_RUNTIME", help=RUNTIME_HELP.format(what="model")),
) -> None:
    """Export image (and caption) embeddings of DATA, row-aligned with its records."""
    from entrep.data.augment import parse_view
    from entrep.features.export import export_embeddings

    parse_view(view)
    show = sys.stderr.isatty() if progress is None else progress
    path = export_embeddings(data, out, profile=profile, view=view, cache=cache, batch_size=batch_size,
                             progress=show, device=device, engine=engine, ray_address=ray_address, workers=workers,
                             shard_rows=shard_rows, model=model, flips=flips, runtime=runtime)
    console.print(f"wrote {path}")


@app.command("encoders")
def encoders_cmd(
    pattern: str = typer.Argument("*", help="Glob over encoder names, e.g. 'dinov2*'."),
    aliases: bool = typer.Option(False, "--aliases", help="Also list alias names."),
) -> None:
    """List registered image and text encoders (and the built-in profiles)."""
    from entrep.encoders import list_encoders
    from entrep.encoders.profiles import list_profiles
    from entrep.encoders.registry import IMAGE, TEXT

    for kind, reg in (("image", IMAGE), ("text", TEXT)):
        for name in list_encoders(pattern, kind=kind, aliases=aliases):
            entry = reg.entry(name)
            sys.stdout.write(f"{kind:5}  {name:38}  {entry.summary}\n")
    sys.stdout.write(f"profiles: {', '.join(list_profiles())}\n")
