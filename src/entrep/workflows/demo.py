"""The demo: synthetic data -> audit -> split -> fit -> evaluate -> report, on the offline default profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from entrep.errors import UserError

Stage = Callable[[str], None]


@dataclass(frozen=True)
class DemoResult:
    data_dir: Path
    split_dir: Path
    model_dir: Path
    report_dir: Path
    audit_summary: str
    evaluation: dict


def _noop(_: str) -> None:
    pass


def run_demo(out: str | Path = "entrep-demo", *, n: int = 400, seed: int = 0, cache=None, progress: bool = False,
             stage: Stage = _noop) -> DemoResult:
    """Run the whole demo into ``out`` (reusing generated data there) and return where everything went."""
    from entrep.config import FitConfig
    from entrep.data.audit import audit_datasets
    from entrep.data.readers import read_dataset
    from entrep.data.split import split_dataset, write_splits
    from entrep.data.synthetic import generate
    from entrep.io import write_json_atomic
    from entrep.model import attach_report
    from entrep.model.train import fit
    from entrep.report.html import write_report

    if n < 70:
        raise UserError(f"--n {n} is too small for a demo; use at least 70 images")
    out = Path(out)
    data_dir, split_dir, model_dir, report_dir = out / "data", out / "splits", out / "model", out / "report"
    if data_dir.exists():
        stage(f"1/6 synthetic data: reusing {data_dir}")
    else:
        stage(f"1/6 synthetic data: generating {n} ENT endoscopy images in ENTRep layout")
        generate(data_dir, n=n, seed=seed, progress=progress)
    ds = read_dataset(data_dir)
    stage("2/6 audit: unreadable files, duplicates, class conflicts")
    audit = audit_datasets({"data": ds}).summary()
    stage("3/6 split: stratified 80/10/10, duplicates kept together")
    splits = split_dataset(ds, seed=seed)
    write_splits(splits, split_dir)
    stage(f"    train {len(splits['train'])} / val {len(splits['val'])} / test {len(splits['test'])} -> {split_dir}")
    stage("4/6 fit: features, alignment, prototypes, heads, inference policy, gallery")
    model = fit(splits["train"], val=splits["val"], config=FitConfig(seed=seed), cache=cache, progress=progress,
                stage=stage)
    model.save(model_dir)
    stage("5/6 evaluate on the held-out test split")
    test = read_dataset(split_dir / "test.jsonl", model.taxonomy)
    evaluation, artefacts = model.evaluate(test, stage=stage)
    write_report(report_dir, evaluation, confusions=artefacts["confusions"], embeddings=artefacts["embeddings"])
    write_json_atomic(report_dir / "evaluation.json", evaluation)
    attach_report(model_dir, report_dir)  # `serve` links the report kept with the model
    stage("6/6 done")
    return DemoResult(data_dir=data_dir, split_dir=split_dir, model_dir=model_dir, report_dir=report_dir,
                      audit_summary=audit, evaluation=evaluation)
