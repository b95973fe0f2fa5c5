"""`entrep fit`, `evaluate`, `predict` and `demo`: parse, one library call, print."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import List, Literal, Optional

import typer
from rich.markup import escape

from entrep.cli.app import app, console, emit_json

#: image-encoder runtimes (entrep.config.RUNTIMES, not imported here to keep start-up light; a test checks they agree)
Runtime = Literal["auto", "torch", "onnx"]
RUNTIME_HELP = ("Image-encoder runtime: auto (ONNX Runtime on CPU where the encoder exports, else torch), torch or "
                "onnx (default: $ENTREP_RUNTIME, else the {what}'s config; see docs/encoders.md).")


def _taxonomy(path: Optional[Path | str]):
    if path is None:
        return None
    from entrep.taxonomy import load_taxonomy

    return load_taxonomy(path)


def _read(path: Path, taxonomy, skip_bad: bool = False):
    from entrep.data.readers import read_dataset

    return read_dataset(path, taxonomy, skip_bad=skip_bad)


class _Stages:
    """Prints each stage with its elapsed time (a progress display for long work)."""

    def __init__(self, quiet: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            console.print(f"[dim]{time.perf_counter() - self.t0:7.1f}s[/dim]  {escape(msg)}", highlight=False)


@app.command("fit")
def fit_cmd(
    data: Path = typer.Option(..., "--data", help="Training data: ENTRep folder, data.json, class folders or JSONL manifest."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (atomically)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation data for early stopping and the inference policy (default: a 10% stratified hold-out of --data)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Encoder profile: offline (default, no download), paper, or a profile file."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training config YAML/JSON (see docs/classification.md)."),
    taxonomy: Optional[Path] = typer.Option(None, "--taxonomy", help="Taxonomy YAML/JSON (default: the config's taxonomy key, ENT, or inferred from class folders)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images with a warning instead of stopping."),
    finetune: Optional[str] = typer.Option(None, "--finetune", help="Adapt the image backbone: none (default), lora or partial (see docs/finetune.md)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted fine-tuning run from its last checkpoint."),
    ensemble: Optional[int] = typer.Option(None, "--ensemble", min=1, help="Train K models on K group-aware folds and average them at inference (default: the config's ensemble key, 1; see docs/classification.md)."),
    runtime: Optional[Runtime] = typer.Option(None, "--runtime", envvar="ENTREP_RUNTIME", help=RUNTIME_HELP.format(what="training")),
) -> None:
    """Train prototypes, heads and the inference policy on DATA and save the model folder."""
    from entrep.config import load_config
    from entrep.model import config_taxonomy, fit_model

    cfg = load_config(config)
    if profile:
        cfg = cfg.replace(profile=profile)
    if finetune:
        from entrep.config import FinetuneConfig

        cfg = cfg.replace(finetune=FinetuneConfig(**{**dataclasses.asdict(cfg.finetune), "method": finetune}))
    if ensemble is not None:
        cfg = cfg.replace(ensemble=ensemble)
    if runtime is not None:
        cfg = cfg.replace(runtime=runtime)
    tax = _taxonomy(taxonomy) if taxonomy else config_taxonomy(cfg)
    stages = _Stages()
    ds = _read(data, tax, skip_bad)
    vds = _read(val, ds.taxonomy, skip_bad) if val else None
    stages(f"read {len(ds)} training images" + (f" and {len(vds)} validation images" if vds else ""))
    model = fit_model(ds, out=out, val=vds, config=cfg, progress=True, stage=stages, resume=resume)
    if cfg.ensemble > 1:
        console.print(f"[green]saved[/green] {escape(model.fit_summary())}", highlight=False)
        return
    sel = model.training.get("policy_selection", {})
    acc = sel.get("validation_accuracy", {}).get(model.policy.name, float("nan"))
    console.print(
        f"[green]saved[/green] model to {escape(str(out))}  (inference policy {model.policy.name}: validation "
        f"accuracy {acc:.3f}, best of {len(sel.get('candidates', []))} candidates; {model.training['seconds']} s)",
        highlight=False,
    )


def _evaluate(model_path: Path, data: Path, report: Optional[Path], json_out: Optional[Path], skip_bad=False,
              runtime: Optional[str] = None):
    from entrep.io import write_json_atomic
    from entrep.model import load_model

    model = load_model(model_path, runtime=runtime)
    ds = _read(data, model.taxonomy, skip_bad)
    evaluation, artefacts = model.evaluate(ds, stage=_Stages())
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
    pol = ev.get("policy") or {}
    if pol.get("chosen"):
        console.print(f"inference policy: {pol['chosen']} (chosen on validation)", highlight=False)
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
    runtime: Optional[Runtime] = typer.Option(None, "--runtime", envvar="ENTREP_RUNTIME", help=RUNTIME_HELP.format(what="model")),
) -> None:
    """Score every system (prototype, baseline head, hybrid, chosen policy) and retrieval on DATA."""
    ev = _evaluate(model, data, report, json_out, skip_bad, runtime=runtime)
    _print_summary(ev)
    if report:
        console.print(f"report: {escape(str(report / 'report.html'))}")


@app.command("predict")
def predict_cmd(
    images: List[Path] = typer.Argument(..., help="Image files."),
    model: Path = typer.Option(..., "--model", help="Model folder from `entrep fit`."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    runtime: Optional[Runtime] = typer.Option(None, "--runtime", envvar="ENTREP_RUNTIME", help=RUNTIME_HELP.format(what="model")),
) -> None:
    """Classify images: label, group, confidence and which part decided."""
    from entrep.data.images import load_rgb
    from entrep.model import load_model

    for p in images:  # fail early, with the file name, before any model work
        load_rgb(p)
    preds = load_model(model, runtime=runtime).predict(list(images))
    if as_json:
        emit_json([{k: v for k, v in p.items() if k != "probabilities"} for p in preds])
        return
    from rich.table import Table

    t = Table()
    for col in ("image", "label", "group", "confidence", "source"):
        t.add_column(col)
    for p in preds:
        t.add_row(escape(Path(p["image"]).name), p["label"], p["group"], f"{p['confidence']:.3f}", p["source"])
    console.print(t)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("entrep-demo"), "--out", help="Folder for the demo's data, model and report."),
    n: int = typer.Option(400, "--n", help="Number of synthetic images to generate."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Synthetic data -> audit -> split -> fit -> evaluate -> report, on the offline default profile."""
    from entrep.workflows import run_demo

    res = run_demo(out, n=n, seed=seed, progress=True, stage=_Stages())
    console.print(res.audit_summary, highlight=False, markup=False)
    _print_summary(res.evaluation)
    console.print(f"report:  {escape(str(res.report_dir / 'report.html'))}")
    console.print(f"model:   {escape(str(res.model_dir))}")
    console.print(f"serve it: [bold]{escape(_entrep_command())} serve --model {escape(str(res.model_dir))}[/bold]",
                  highlight=False)


def _entrep_command() -> str:
    """How the user can call entrep again: plain `entrep` when it is on PATH, else the path they used."""
    import shutil
    import sys

    used = Path(sys.argv[0])
    on_path = shutil.which("entrep")
    if used.name == "entrep" and "/" in sys.argv[0] and (not on_path or Path(on_path).resolve() != used.resolve()):
        return sys.argv[0]
    return "entrep"
