"""`entrep index`, `search` and `submit`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from entrep.cli.app import app, console, emit_json
from entrep.cli.commands.model import RUNTIME_HELP, Runtime
from entrep.errors import UserError


@app.command("index")
def index_cmd(
    model: Path = typer.Option(..., "--model", help="Model folder from `entrep fit`."),
    gallery: Optional[Path] = typer.Option(None, "--gallery", help="Images to search: any dataset layout, or a flat folder of images."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Re-embed everything instead of updating (only new images are embedded by default)."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="Index from `entrep embed --out DIR` shards instead of images (encoders must match the model's)."),
    engine: str = typer.Option("local", "--engine", help="local or ray: how --gallery images are embedded."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join this Ray cluster (default: start Ray here)."),
    runtime: Optional[Runtime] = typer.Option(None, "--runtime", envvar="ENTREP_RUNTIME", help=RUNTIME_HELP.format(what="model")),
) -> None:
    """(Re)build the model's search index over a gallery; unchanged images are not re-embedded."""
    import entrep
    from entrep.retrieval.shards import index_model

    if (gallery is None) == (embeddings is None):
        raise UserError("give exactly one of --gallery (images) or --embeddings (shards from `entrep embed`)")
    m = entrep.load(model, runtime=runtime)
    stats = index_model(m, gallery=gallery, embeddings=embeddings, engine=engine, ray_address=ray_address,
                        rebuild=rebuild)
    m.save(model)
    console.print(f"gallery of {stats['size']} images ({stats['added']} added, {stats['removed']} removed) saved in {model}")
    report = getattr(m.gallery, "build_report", None)
    if report:
        console.print(f"approximate index: {report}", highlight=False)


@app.command("search")
def search_cmd(
    model: Path = typer.Option(..., "--model", help="Model folder (with a gallery)."),
    text: Optional[str] = typer.Option(None, "--text", help="Text query, e.g. 'a spur on the septum'."),
    image: Optional[Path] = typer.Option(None, "--image", help="Query image file."),
    k: int = typer.Option(10, "-k", "--k", help="Number of results."),
    filter: Optional[str] = typer.Option(None, "--filter", help="image: fine (default), coarse, none or a class; text: none (default), auto (class named in the text) or a class."),
    hide_names: bool = typer.Option(False, "--hide-names", help="Omit gallery file paths (raw hospital names can carry patient ids)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: a list of {image, score, label}, best first."),
    runtime: Optional[Runtime] = typer.Option(None, "--runtime", envvar="ENTREP_RUNTIME", help=RUNTIME_HELP.format(what="model")),
) -> None:
    """Search the model's gallery by text or by image."""
    from entrep.model import load_model
    from entrep.retrieval.search import search_image, search_text

    if (text is None) == (image is None):
        raise UserError("give exactly one of --text or --image")
    m = load_model(model, runtime=runtime)
    if text is not None:
        res = search_text(m, text, k=k, filter=filter or "none", hide_names=hide_names)
    else:
        from entrep.data.images import load_rgb

        load_rgb(image)  # one-line error naming the file when it is not a usable image
        res = search_image(m, image, k=k, filter=filter, hide_names=hide_names)
    hits = res["results"]
    if as_json:
        emit_json([{"image": h["image"], "score": h["score"], "label": h["label"]} for h in hits])
        return
    if "prediction" in res:
        p = res["prediction"]
        console.print(f"query predicted {p['label']} ({p['confidence']:.3f}, {p['source']}); filter {res['filter']}")
    from rich.table import Table

    t = Table()
    for col in ("#", "score", "label", "image"):
        t.add_column(col)
    for i, h in enumerate(hits, 1):
        t.add_row(str(i), f"{h['score']:.4f}", str(h["label"]), h["image"] or f"id {h['id']}")
    console.print(t)


@app.command("submit")
def submit_cmd(
    model: Path = typer.Option(..., "--model", help="Model folder from `entrep fit`."),
    track: int = typer.Option(..., "--track", help="1 classification, 2 image->image, 3 text->image."),
    queries: Path = typer.Option(..., "--queries", help="Header-less query CSV (cls.csv, i2i.csv or t2i.csv)."),
    images: Path = typer.Option(..., "--images", help="Folder with the test images (queries and gallery)."),
    out: Path = typer.Option(..., "--out", help="Zip file to write."),
    filter: Optional[str] = typer.Option(None, "--filter", help="Track 2 candidate filter: fine (default), coarse or none."),
    runtime: Optional[Runtime] = typer.Option(None, "--runtime", envvar="ENTREP_RUNTIME", help=RUNTIME_HELP.format(what="model")),
) -> None:
    """Write an ENTRep challenge submission: one JSON at the root of a zip, every query answered."""
    from entrep.model import load_model
    from entrep.challenge import make_submission

    if track not in (1, 2, 3):
        raise UserError(f"--track must be 1, 2 or 3, got {track}")
    m = load_model(model, runtime=runtime)
    summary = make_submission(m, track, queries, images, out, filter=filter)
    console.print(f"wrote {out}: track {track}, {summary['n_queries']} queries answered"
                  + (f", gallery of {summary['gallery']} images" if summary.get("gallery") else ""))
    for p in summary.get("problems", []):
        console.print(f"[yellow]warning:[/yellow] {p}")
