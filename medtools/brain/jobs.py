"""What the brain commands run: cases from the inputs, outputs under -o, the batch driver, the
stdout contract. The command layer (commands.py) only parses flags and calls one of these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtools.core import report


def data_arg(paths: list[Path]) -> Any:
    """One manifest or folder as itself; several as a list."""
    return paths[0] if len(paths) == 1 else paths


def cases_for(inputs: list[str], shard: str | None, output: Path | None = None, outputs_of=None):
    """Cases from the positional inputs (the K-th of N parts when sharded), kept apart from -o.

    Cases found in an -o folder inside an input folder are earlier outputs and left out;
    an output that would overwrite a case file or land in a walked input folder exits 2.
    ``outputs_of(case)`` gives the paths a case would be written to.
    """
    from medtools.brain.cases import resolve_cases
    from medtools.core.inputs import check_left_out, check_separate, in_excluded_output, input_roots, select_shard

    roots = input_roots(inputs)
    found = resolve_cases(inputs)
    cases = [c for c in found if not any(in_excluded_output(p, output, roots) for p in c.files.values())]
    if output is not None and outputs_of is not None:
        for case in cases:
            sources = [*case.files.values(), *([case.label] if case.label is not None else [])]
            for target in outputs_of(case):
                check_separate(target, output, inputs=sources, roots=roots)
        kept = {id(c) for c in cases}
        check_left_out([p for c in found if id(c) not in kept for p in c.files.values()], [t for c in cases for t in outputs_of(c)], output)
    return select_shard(cases, shard, key=lambda c: c.case)


def case_outputs(output: Path, names):
    """Where a case's files go under -o (its folder mirrored) for the given file names."""
    return lambda case: [output / case.rel_dir / name for name in names(case)]


def report_cases(results, record: report.RunRecord, *, skipped: int = 0) -> int:
    """The batch driver over (case, result) pairs: each path on stdout as soon as its file is
    renamed into place (or one JSON line per case), errors on stderr, the exit code."""
    import contextlib

    from medtools.core.context import current

    from medtools.core import batch
    from medtools.core.io import on_renamed

    json_output = current().json
    printed: set[str] = set()

    def announce(path: Path) -> None:
        printed.add(str(path))
        report.emit_path(path)

    def emit(result) -> None:
        if json_output:
            report.emit_jsonl(result)
        else:
            for path in result["outputs"] if isinstance(result, dict) else result:
                if str(path) not in printed:
                    report.emit_path(path)

    def as_record(case: Any, result: Any) -> Any:  # a list of written paths → the case's JSON record
        return {"case": case.case, "outputs": [str(p) for p in result]} if isinstance(result, (list, tuple)) else result

    with contextlib.nullcontext() if json_output else on_renamed(announce):
        outcome = batch.run_pairs(((case, as_record(case, result)) for case, result in results), emit=emit, name=lambda case: case.case, description="cases")
    outcome.skipped += skipped
    if json_output:
        report.emit_jsonl({"summary": {"ok": outcome.ok, "failed": outcome.failed, "skipped": outcome.skipped}, "run": record.as_dict()})
    return outcome.exit_code


def explain_side(method: str, output: Path, *, volume: int | None = None, batch_size: int | None = None):
    """``segment --explain METHOD``: after a case's outputs, its saliency map beside them through
    ``medtools.api.explain_beside`` with the loaded segmenter (named and written as ``medtools
    explain`` does: ``<case>_<method>.nii.gz``; the numbers under ``explain`` in --json)."""
    from medtools import api

    api.check_explain_method(method)

    def side(case: Any, images: list, model: Any) -> tuple[list[Path], dict]:
        written, numbers = api.explain_beside(images, model, output / case.rel_dir, case.case, method=method, volume=volume, batch_size=batch_size or 16)
        for record in numbers["targets"]:
            for flag in record["flags"]:
                report.warn(f"{case.case}: explain target {record['target']}: {flag}")
        return written, {"explain": numbers}

    return side


def segment_job(inputs: list[str], model: Path, output: Path | None, *, probabilities: bool, out_format: str, tta: bool, largest_component: bool, batch_size: int | None, workers: int, shard: str | None, device: str | None, precision: str | None, compile: bool, overwrite: bool, resample: bool = True, volume: int | None = None, explain: str | None = None) -> int:
    """``segment``: label maps (and probabilities, and with ``explain`` saliency maps) of every
    case under -o; exit code."""
    from medtools.brain.segment import output_ext, segment_cases
    from medtools.core.inputs import check_output_arg, skip_existing

    output = check_output_arg(output, 2)
    if explain is not None and compile:
        from medtools.core.errors import UsageError

        raise UsageError("--explain hooks the eager model's layers: drop --compile")
    side = explain_side(explain, output, volume=volume, batch_size=batch_size) if explain is not None else None

    def names(case: Any) -> list[str]:
        extra = [f"{case.case}_seg_prob.nii.gz"] if probabilities and out_format != "dicom-seg" else []
        return [f"{case.case}_seg{output_ext(case, out_format)}", *extra]

    targets = case_outputs(output, names)
    cases = cases_for(inputs, shard, output, targets)
    record = report.RunRecord(options={"tta": tta, "largest_component": largest_component, "resample": resample, **({"volume": volume} if volume is not None else {}), **({"explain": explain} if explain is not None else {})})
    record.add_checkpoint(model)
    # skip-existing here, for either format (segment_cases only knows the .nii.gz name)
    todo = [case for case in cases if not skip_existing(targets(case)[0], overwrite)]
    skipped = len(cases) - len(todo)
    results = segment_cases(todo, model, output, device=device, precision=precision, compile=compile, batch_size=batch_size or 32, workers=workers, probabilities=probabilities, overwrite=True, out_format=out_format, tta=tta, keep_largest=largest_component, resample=resample, volume=volume, side=side) if todo else iter(())
    return report_cases(results, record, skipped=skipped)


def seg_eval_job(pred: Path, truth: Path | None, *, hd95: bool, attack: str | None, model: Path | None, eps: str, steps: int | None, step_size: float | None, batch_size: int | None, device: str | None, seed: int) -> int:
    """``seg-eval``: PRED against TRUTH, or with --attack the Dice curve under attack; exit code."""
    from medtools.brain.evaluate import evaluate_pair, pair_files, render_scores, summarise
    from medtools.core import batch
    from medtools.core.errors import InputError

    if attack is not None or model is not None or truth is None:
        return seg_eval_attack(pred, truth, attack=attack, model=model, eps=eps, steps=steps, step_size=step_size, batch_size=batch_size, device=device, seed=seed)
    pairs = pair_files(pred, truth)
    per_case: dict[str, dict] = {}

    def work(pair):
        case, pred_path, truth_path = pair
        if pred_path is None:
            raise InputError("no prediction for this case")
        per_case[case] = evaluate_pair(pred_path, truth_path, with_hd95=hd95)

    outcome = batch.run_items(pairs, work, name=lambda p: p[0], total=len(pairs), description="seg-eval")
    if not per_case:
        raise InputError("no prediction matched any ground-truth case")
    result = {"mean": summarise(per_case), "cases": per_case, "missing": [c for c, p, _ in pairs if p is None]}
    report.emit_result(result, render_scores, record=report.RunRecord())
    return outcome.exit_code


def seg_eval_attack(cases_arg: Path, truth: Path | None, *, attack, model, eps, steps, step_size, batch_size, device, seed) -> int:
    """seg-eval --attack: brain/robust.py evaluate_attack on the cases, a curve in --json, a table otherwise."""
    from medtools.brain.robust import evaluate_attack, render_curve
    from medtools.core.errors import UsageError

    if attack is None or model is None or truth is not None:
        raise UsageError("seg-eval takes PRED TRUTH, or CASES --attack fgsm|pgd -m seg.safetensors")
    record = report.RunRecord(seed=seed)
    record.add_checkpoint(model)
    result, outcome = evaluate_attack(cases_for([str(cases_arg)], None), model, attack=attack, eps=eps, steps=steps, step_size=step_size, batch_size=batch_size or 16, device=device, seed=seed)
    report.emit_result(result, render_curve, record=record)
    return outcome.exit_code


def reid_eval_job(data: list[Path], model: Path, *, verify: bool, batch_size: int | None, device: str | None) -> int:
    """``reid-eval``: the attacker's accuracy (and verification AUC) on these cases."""
    from medtools.brain.reid import eval_reid, render_reid

    record = report.RunRecord()
    record.add_checkpoint(model)
    result = eval_reid(data_arg(data), model, batch_size=batch_size or 64, device=device, verify=verify)
    report.emit_result(result, render_reid, record=record)
    return 0


def protect_job(inputs: list[str], output: Path | None, *, attackers: list[Path], utility: Path | None, key_file: Path | None, batch_size: int | None, seed: int, shard: str | None, **options: Any) -> int:
    """``protect``: protected copies of every case under -o, metrics per case; exit code."""
    from medtools.brain.protect import protect_cases
    from medtools.core.inputs import check_output_arg

    output = check_output_arg(output, 2)
    secret = read_secret(key_file) if key_file is not None else None
    cases = cases_for(inputs, shard, output, case_outputs(output, lambda case: [p.name for p in case.files.values()]))
    record = report.RunRecord(seed=seed)
    for path in [*attackers, *([utility] if utility else [])]:
        record.add_checkpoint(path)
    results = protect_cases(cases, output, attackers=attackers, utility=utility, batch_size=batch_size or 32, seed=seed, key=secret, **options)
    return report_cases(results, record)


def read_secret(key_file: Path) -> bytes:
    """protect --key-file: private key material, refused when open to group/others."""
    from medtools.core.errors import UsageError
    from medtools.core.secrets import check_private_permissions

    check_private_permissions(key_file, "a protect secret")
    try:
        return key_file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --key-file {key_file}: {exc.strerror}") from None
