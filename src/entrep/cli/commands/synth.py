"""`entrep synth`: write a synthetic ENT endoscopy dataset in the ENTRep layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from entrep.cli.app import app, console, emit_json


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Output folder (created; must be empty unless --force)."),
    n: int = typer.Option(1857, "--n", help="Number of training images (paper Table 1 class proportions)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes byte-identical files."),
    public: bool = typer.Option(False, "--public/--no-public", help="Also write a public-release folder OUT/public/ with data.json."),
    public_n: Optional[int] = typer.Option(None, "--public-n", help="Images in the public release (default: n x 566/1857)."),
    queries: bool = typer.Option(True, "--queries/--no-queries", help="Write held-out query CSVs, images and answer keys in OUT/queries/."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Rendering processes (default: all cores; 1 below 48 images)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty OUT."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Write a synthetic dataset: OUT/imgs, cls.json, i2i.json, t2i.json, queries/ (and public/)."""
    from entrep.data.synthetic import generate

    summary = generate(out, n=n, seed=seed, public=public, public_n=public_n, queries=queries,
                       progress=not as_json, workers=workers, force=force)
    if as_json:
        emit_json(summary)
        return
    _print_summary(summary)


def _print_summary(s: dict) -> None:
    from rich.table import Table

    console.print(f"synthetic ENTRep data written to {escape(str(s['out']))} in {s['seconds']} s", highlight=False)
    t = Table()
    t.add_column("class")
    t.add_column("train", justify="right")
    has_pub = s.get("public") is not None
    if has_pub:
        t.add_column("public", justify="right")
    for c, k in s["counts"].items():
        row = [c, str(k)] + ([str(s["public"]["counts"][c])] if has_pub else [])
        t.add_row(*row)
    t.add_row("total", str(s["n_images"]), *([str(s["public"]["n_images"])] if has_pub else []), style="bold")
    console.print(t)
    console.print(f"i2i.json: {s['n_pairs']} pairs ({s['n_i2i_entries']} entries); t2i.json: {s['n_captions']} captions")
    if has_pub:
        p = s["public"]
        console.print(f"public/data.json: {p['n_images']} records from {p['n_patients']} patients; "
                      f"{p['n_case_mismatch']} record(s) name _imageNN while the file is _ImageNN")
    if s.get("queries"):
        q = s["queries"]
        console.print(f"queries/: cls.csv ({q['n_cls']} images), i2i.csv ({q['n_i2i']}), t2i.csv ({q['n_t2i']} captions), "
                      "imgs/, answers.json")
    for k, v in s["paths"].items():
        console.print(f"  {k:13s} {escape(str(v))}", highlight=False)
