"""`entrep review` and `entrep review-calibrate`: parse, one library call, print."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from entrep.cli.app import app, console, emit_json


@app.command("review")
def review_cmd(
    exam: Path = typer.Argument(..., help="The exam: a video (mp4, avi, mov, mkv) or a folder of frames."),
    model: Path = typer.Option(..., "--model", help="Fitted model folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for review.json, review.html and best/SITE.jpg."),
    fps: float = typer.Option(2.0, "--fps", help="Frames per second sampled from a video (a folder's frames are all read)."),
    require: Optional[str] = typer.Option(None, "--require", help="Comma-separated sites the exam must show (default: every class)."),
    smoothing: Optional[str] = typer.Option(None, "--smoothing", help="Temporal smoothing: hmm (default), ema or none."),
    config: Optional[Path] = typer.Option(None, "--config", help="Review settings YAML/JSON: thresholds, smoothing, required sites (docs/review.md)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the review document (JSON) to this file; '-' prints it."),
) -> None:
    """Review an exam: drop uninformative frames, classify the rest, and report sites, best frames and what is missing."""
    import dataclasses

    import entrep
    from entrep.io import write_json_atomic
    from entrep.review import ReviewConfig, load_review_config, review_exam

    cfg = load_review_config(config) if config is not None else ReviewConfig()
    if smoothing is not None:
        cfg = dataclasses.replace(cfg, smoothing=smoothing)
    m = entrep.load(model)
    doc = review_exam(m, exam, fps=fps, require=require, out=out, progress=True, config=cfg)
    if json_out is not None and str(json_out) == "-":
        emit_json(doc)
    elif json_out is not None:
        write_json_atomic(json_out, doc)
    _print(doc, out)


def _print(doc: dict, out: Optional[Path]) -> None:
    d = doc["dropped"]
    drops = ", ".join(f"{n} {r}" for r, n in d.items() if n) or "none"
    console.print(f"{doc['n_frames']} frames, {doc['n_kept']} kept; dropped: {drops}", highlight=False)
    for site, s in doc["sites"].items():
        console.print(f"  {escape(site):12s} best {escape(str(s['best_frame']))} at {s['time_s']:.2f} s "
                      f"(confidence {s['confidence']:.2f}, {s['frames']} frames)", highlight=False)
    verdict = "[green]complete[/green]" if doc["complete"] else "[red]incomplete[/red]"
    missing = ", ".join(doc["missing"]) or "none"
    weak = ", ".join(doc["low_confidence"]) or "none"
    console.print(f"exam {verdict}: missing {escape(missing)}; low confidence {escape(weak)}", highlight=False)
    if doc.get("decode_error"):
        console.print(f"[yellow]warning:[/yellow] {escape(doc['decode_error'])}", highlight=False)
    if out is not None:
        console.print(f"wrote {escape(str(out / 'review.html'))} and review.json", highlight=False)


@app.command("review-calibrate")
def calibrate_cmd(
    frames: List[Path] = typer.Argument(..., help="Good frames: image files or folders of them (at least 5)."),
    out: Path = typer.Option(..., "--out", help="Review config file to write (YAML or JSON by suffix)."),
    margin: float = typer.Option(0.5, "--margin", help="Thresholds at this fraction of the good frames' 5th percentile."),
) -> None:
    """Set the cleansing thresholds from frames known to be good and write them as a review config."""
    from entrep.review import ReviewConfig, calibrate_files, write_review_config

    cfg = ReviewConfig(cleanse=calibrate_files(frames, margin=margin))
    write_review_config(out, cfg, only=("cleanse",))
    console.print(f"wrote {escape(str(out))}: " + ", ".join(f"{k}={v}" for k, v in cfg.cleanse.to_dict().items()),
                  highlight=False)
