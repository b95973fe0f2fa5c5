"""`entrep fit`, `evaluate`, `predict` and `demo`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer

from entrep.cli.app import app, console, emit_json
from entrep.errors import UserError


def _taxonomy(path: Optional[Path]):
    if path is None:
        return None
    from entrep.taxonomy import load_taxonomy

    return load_taxonomy(path)


def _read(path: Path, taxonomy, skip_bad: bool = False):
    from entrep.data.readers import read_dataset

    return read_dataset(path, taxonomy, skip_bad=skip_bad)


class _Stages:
    """Prints each pipeline stage with its elapsed time (a progress display for long work)."""

    def __init__(self, quiet: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            console.print(f"[dim]{time.perf_counter() - self.t0:7.1f}s[/dim]  {msg}", highlight=False)


def _fit_and_save(data, val, out: Path, config, stages, progress=True):
    from entrep.bundle import save_model
    from entrep.pipeline import fit

    model = fit(data, val=val, config=config, progress=progress, stage=stages)
    save_model(model, out)
    return model


@app.command("fit")
def fit_cmd(
    data: Path = typer.Option(..., "--data", help="Training data: ENTRep folder, data.json, class folders or JSONL manifest."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (atomically)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation data for early stopping and threshold tuning (default: a 10% stratified hold-out of --data)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Encoder profile: offline (default, no download), paper, or a profile file."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training config YAML/JSON (see docs/classification.md)."),
    taxonomy: Optional[Path] = typer.Option(None, "--taxonomy", help="Taxonomy YAML/JSON (default: ENT, or inferred from class folders)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images with a warning instead of stopping."),
) -> None:
    """Train prototypes, heads and the hybrid on DATA and save the model folder."""
    from entrep.config import load_config

    cfg = load_config(config)
    if profile:
        cfg = cfg.replace(profile=profile)
    tax = _taxonomy(taxonomy)
    stages = _Stages()
    ds = _read(data, tax, skip_bad)
    vds = _read(val, ds.taxonomy, skip_bad) if val else None
    stages(f"read {len(ds)} training images" + (f" and {len(vds)} validation images" if vds else ""))
    model = _fit_and_save(ds, vds, out, cfg, stages)
    tr = model.training
    console.print(
        f"[green]saved[/green] model to {out}  (validation accuracy {tr['val_accuracy']['threshold_default']:.3f} "
        f"at threshold {model.threshold}, {tr['val_accuracy']['threshold_tuned']:.3f} at tuned "
        f"{model.tuned_threshold:.4f}; using {'tuned' if model.use_tuned else 'default'}; {tr['seconds']} s)",
        highlight=False,
    )


def _evaluate(model_path: Path, data: Path, report: Optional[Path], json_out: Optional[Path], skip_bad=False,
              stages=None):
    from entrep.bundle import load_model
    from entrep.io import write_json_atomic
    from entrep.pipeline import evaluate

    stages = stages or _Stages()
    model = load_model(model_path)
    ds = _read(data, model.taxonomy, skip_bad)
    evaluation, artefacts = evaluate(model, ds, stage=stages)
    if json_out:
        write_json_atomic(json_out, evaluation)
    if report:
        from entrep.report.html import write_report

        write_report(report, evaluation, confusions=artefacts["confusions"], embeddings=artefacts["embeddings"])
    return evaluation


def _print_summary(ev: dict) -> None:
    from rich.table import Table

    t = Table(title=f"classification on {ev['n_images']} images")
    for col in ("system", "level", "accuracy", "macro F1", "weighted F1"):
        t.add_column(col)
    for sysname, levels in ev["classification"]["systems"].items():
        for level, s in levels.items():
            t.add_row(sysname, level, f"{s['accuracy']:.4f}", f"{s['macro_f1']:.4f}", f"{s['weighted_f1']:.4f}")
    console.print(t)
    r = ev.get("retrieval") or {}
    if r:
        rt = Table(title="retrieval (leave-one-out)")
        for col in ("task", "relevance", "R@1", "R@5", "R@10", "MRR", "queries"):
            rt.add_column(col)
        for task in ("i2i", "t2i"):
            for rel, s in (r.get(task) or {}).items():
                if isinstance(s, dict) and "n_queries" in s and s["n_queries"]:
                    rt.add_row(task, rel, *(f"{s[k]:.4f}" for k in ("recall@1", "recall@5", "recall@10", "mrr")),
                               str(s["n_queries"]))
        console.print(rt)


@app.command("evaluate")
def evaluate_cmd(
    model: Path = typer.Option(..., "--model", help="Model folder from `entrep fit`."),
    data: Path = typer.Option(..., "--data", help="Labelled data to score (all of it)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the report (Markdown + self-contained HTML + figures) here."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the scores as JSON here."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images with a warning."),
) -> None:
    """Score every system (prototype, baseline head, hybrid) and retrieval on DATA."""
    ev = _evaluate(model, data, report, json_out, skip_bad)
    _print_summary(ev)
    if report:
        console.print(f"report: {report / 'report.html'}")


@app.command("predict")
def predict_cmd(
    images: List[Path] = typer.Argument(..., help="Image files."),
    model: Path = typer.Option(..., "--model", help="Model folder from `entrep fit`."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """Classify images: label, group, confidence and which part decided."""
    from entrep.bundle import load_model
    from entrep.data.images import load_rgb

    m = load_model(model)
    for p in images:  # fail early, with the file name, before any model work
        load_rgb(p)
    preds = m.predict(list(images))
    if as_json:
        emit_json([{k: v for k, v in p.items() if k != "probabilities"} for p in preds])
        return
    from rich.table import Table

    t = Table()
    for col in ("image", "label", "group", "confidence", "source"):
        t.add_column(col)
    for p in preds:
        t.add_row(Path(p["image"]).name, p["label"], p["group"], f"{p['confidence']:.3f}", p["source"])
    console.print(t)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("entrep-demo"), "--out", help="Folder for the demo's data, model and report."),
    n: int = typer.Option(400, "--n", help="Number of synthetic images to generate."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Synthetic data -> audit -> split -> fit -> evaluate -> report, on the offline default profile."""
    from entrep.data.audit import audit_datasets
    from entrep.data.readers import read_dataset
    from entrep.data.split import split_dataset, write_splits
    from entrep.data.synthetic import generate

    if n < 70:
        raise UserError(f"--n {n} is too small for a demo; use at least 70 images")
    stages = _Stages()
    data_dir, split_dir, model_dir, report_dir = out / "data", out / "splits", out / "model", out / "report"
    if data_dir.exists():
        stages(f"1/6 synthetic data: reusing {data_dir}")
    else:
        stages(f"1/6 synthetic data: generating {n} ENT endoscopy images in ENTRep layout")
        generate(data_dir, n=n, seed=seed, progress=True)
    ds = read_dataset(data_dir)
    stages("2/6 audit: unreadable files, duplicates, class conflicts")
    rep = audit_datasets({"data": ds})
    console.print(rep.summary(), highlight=False)
    stages("3/6 split: stratified 80/10/10, duplicates kept together")
    splits = split_dataset(ds, seed=seed)
    write_splits(splits, split_dir)
    stages(f"    train {len(splits['train'])} / val {len(splits['val'])} / test {len(splits['test'])} -> {split_dir}")
    stages("4/6 fit: features, alignment, prototypes, heads, hybrid, gallery")
    from entrep.config import FitConfig

    model = _fit_and_save(splits["train"], splits["val"], model_dir, FitConfig(seed=seed), stages)
    stages("5/6 evaluate on the held-out test split")
    ev = _evaluate(model_dir, split_dir / "test.jsonl", report_dir, report_dir / "evaluation.json", stages=stages)
    # keep a copy of the report with the model so `serve` can link it
    from entrep.bundle import attach_report

    attach_report(model_dir, report_dir)
    stages("6/6 done")
    _print_summary(ev)
    console.print(f"report:  {report_dir / 'report.html'}")
    console.print(f"model:   {model_dir}")
    console.print(f"serve it: [bold]{_entrep_command()} serve --model {model_dir}[/bold]", highlight=False)


def _entrep_command() -> str:
    """How the user can call entrep again: plain `entrep` when it is on PATH, else the path they used."""
    import shutil
    import sys

    used = Path(sys.argv[0])
    on_path = shutil.which("entrep")
    if used.name == "entrep" and "/" in sys.argv[0] and (not on_path or Path(on_path).resolve() != used.resolve()):
        return sys.argv[0]
    return "entrep"
