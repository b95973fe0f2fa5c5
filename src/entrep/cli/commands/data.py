"""Data commands: `entrep audit` (duplicates, leakage, unreadable files) and `entrep split`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from entrep.cli.app import app, console

_TAXONOMY_HELP = "Taxonomy YAML/JSON for classes other than ENT (default: ENT, or inferred from class folders)."


def _taxonomy(path: Optional[Path]):
    from entrep.taxonomy import load_taxonomy

    return load_taxonomy(path) if path is not None else None


@app.command()
def audit(
    data: List[Path] = typer.Argument(..., help="Datasets: ENTRep folders, data.json, class folders, manifests, or a split folder (train/val/test.jsonl)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON to this file."),
    near_threshold: int = typer.Option(4, "--near-threshold", min=0, max=64, help="Largest pHash distance (bits of 64) counted as a near duplicate."),
    hide_names: bool = typer.Option(False, "--hide-names", help="Replace file names with short stable hashes (hospital names may hold patient ids)."),
    skip_bad: bool = typer.Option(False, "--skip-bad/--no-skip-bad", help="Skip records whose image file is missing instead of failing (unreadable images are always reported)."),
    taxonomy: Optional[Path] = typer.Option(None, "--taxonomy", help=_TAXONOMY_HELP),
) -> None:
    """Find unreadable images, exact and near duplicates, leakage between datasets/splits and label conflicts.

    Exit code 0 when clean, 1 when leakage, class conflicts or unreadable images are found
    (2 for bad input). Duplicates inside one dataset are reported but do not fail.
    """
    from entrep.data.audit import audit_datasets, named_datasets
    from entrep.io import write_json_atomic

    named = named_datasets(data, _taxonomy(taxonomy), skip_bad=skip_bad)
    total = sum(len(ds) for ds in named.values())
    with Progress(TextColumn("hashing images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("hash", total=total)
        report = audit_datasets(named, near_threshold=near_threshold, hide_names=hide_names,
                                progress=lambda k: bar.advance(task, k))
    typer.echo(report.summary())
    if json_out is not None:
        write_json_atomic(json_out, report.to_json())
        console.print(f"wrote {escape(str(json_out))}", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def split(
    data: List[Path] = typer.Argument(..., help="Dataset(s) to split; several are merged first (e.g. train folder + public data.json)."),
    out: Path = typer.Option(..., "--out", help="Folder for train.jsonl, val.jsonl, test.jsonl, split.json, taxonomy.json."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same data and seed always give the same split."),
    group_pattern: Optional[str] = typer.Option(
        None, "--group-pattern",
        help=r"Regex whose capture group (or group named 'id') in the file name keys a patient/visit, e.g. '^(\d+)_'.",
    ),
    taxonomy: Optional[Path] = typer.Option(None, "--taxonomy", help=_TAXONOMY_HELP),
) -> None:
    """Split 80/10/10, stratified by class, keeping duplicates and groups inside one split."""
    from entrep.data.readers import read_datasets
    from entrep.data.split import split_dataset, write_splits

    ds = read_datasets(data, _taxonomy(taxonomy))
    splits = split_dataset(ds, seed=seed, group_pattern=group_pattern)
    written = write_splits(splits, out)
    table = Table(title=f"{len(ds)} images, seed {seed}")
    table.add_column("class")
    for name in splits:
        table.add_column(name, justify="right")
    for c in ds.taxonomy.classes:
        table.add_row(escape(c), *(str(sum(r.label == c for r in part.records)) for part in splits.values()))
    table.add_row("total", *(str(len(part)) for part in splits.values()), style="bold")
    console.print(table)
    groups = splits.info["groups"]
    console.print(f"{groups['n_groups']} groups ({groups['multi_image_groups']} with several images, "
                  f"{groups['duplicate_sets']} sets of byte-identical files) kept whole", highlight=False)
    for path in written.values():
        console.print(f"wrote {escape(str(path))}", highlight=False)
    console.print(f"wrote {escape(str(path.parent / 'split.json'))}", highlight=False)
