"""The summaries `kdsearch train` and `kdsearch sweep` print at the end."""

from __future__ import annotations

from pathlib import Path

from kdsearch.tracking.uri import ui_command


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_summary(result) -> str:
    cfg, m = result.config, result.metrics
    lines = [f"{cfg.method} on {cfg.dataset}: student {cfg.student}, teacher {cfg.teacher}"]
    lines.append(f"{'':18}{'val/acc':>9}{'test/acc':>10}")
    if "teacher/test_acc" in m:  # absent for ce/dml until the teacher has been trained once
        lines.append(f"{'teacher ' + cfg.teacher:18}{m['teacher/val_acc']:>9.4f}{m['teacher/test_acc']:>10.4f}")
    lines.append(f"{'student ' + cfg.student:18}{m['val/acc']:>9.4f}{m['test/acc']:>10.4f}")
    if "compression/ratio" in m:
        lines.append(
            f"compression: {human(m['student/params'])} vs {human(m['teacher/params'])} params ({m['compression/ratio']:.2f}x), "
            f"{m['student/size_mb']:.2f} vs {m['teacher/size_mb']:.2f} MB ({m['compression/size_ratio']:.2f}x), "
            f"{human(m['student/flops'])} vs {human(m['teacher/flops'])} FLOPs ({m['compression/flops_ratio']:.2f}x)"
        )
    else:
        lines.append(
            f"student: {human(m['student/params'])} params, {m['student/size_mb']:.2f} MB, {human(m['student/flops'])} FLOPs"
        )
    if "latency/cpu_ms" in m:
        speed = f"CPU latency {m['latency/cpu_ms']:.2f} ms at batch 1"
        if "compression/speedup" in m:
            speed += f" ({m['compression/speedup']:.2f}x faster than the teacher's {m['latency/teacher_cpu_ms']:.2f} ms)"
        lines.append(speed + f", {m['throughput/cpu_img_s']:,.0f} images/s at batch 256")
    if "accuracy/drop" in m:
        lines.append(f"accuracy drop vs teacher (test): {100 * m['accuracy/drop']:+.2f} points")
    return "\n".join(lines)


def format_sweep_summary(summary, top: int = 5) -> str:
    import pandas as pd  # the summary of kdsearch train needs no pandas

    m = summary.best_metrics
    metric = summary.objectives[0][0]
    shown = [c for c in summary.table.columns if c not in ("student/params", "student/flops", "latency/cpu_ms", "stopped early")]
    shown += [o for o, _ in summary.objectives[1:]]
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        table = summary.table[shown].head(top).to_string(index=False)
    lines = [f"top trials of {summary.name} ({len(summary.table)} in all):", table, ""]
    if summary.methods is not None:
        best_col = f"best {metric}"
        ranking = ", ".join(f"{r['method']} {r[best_col]:.4f}" for _, r in summary.methods.iterrows())
        lines.append(f"best method: {summary.methods['method'].iloc[0]} (best {metric} of each: {ranking})")
    lines.append(
        "best config: "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.best_params.items())
    )
    acc = f"best student: {metric} {m.get(metric, float('nan')):.4f}  test/acc {m['test/acc']:.4f}"
    if "teacher/test_acc" in m:
        acc += f"  (teacher test/acc {m['teacher/test_acc']:.4f}, drop {100 * m['accuracy/drop']:+.2f} points)"
    lines.append(acc)
    if "compression/ratio" in m:
        lines.append(
            f"compression: {m['compression/ratio']:.2f}x parameters ({human(m['student/params'])}), "
            f"{m['compression/flops_ratio']:.2f}x FLOPs, {m['compression/speedup']:.2f}x CPU latency"
        )
    if (summary.out_dir / "optuna.db").is_file():
        lines.append(f"Optuna study: optuna-dashboard sqlite:///{summary.out_dir / 'optuna.db'}")
    if summary.pareto:
        lines.append(
            f"Pareto front ({', '.join(o for o, _ in summary.objectives)}): trials {', '.join(summary.pareto)}; "
            f"export one with `kdsearch export {summary.sweep_dir if '://' in summary.sweep_dir else summary.name} --trial ID`"
        )
    if summary.smoke_check:
        lines.append(summary.smoke_check)
    if summary.failures:
        lines.append("failed trials: " + "; ".join(f"{t}: {why}" for t, why in summary.failures))
    if "://" in summary.sweep_dir:
        lines.append(
            f"sweep kept in {summary.sweep_dir} (local copy: {summary.out_dir}); "
            f"report, export and sync read it from there: `kdsearch export {summary.sweep_dir} --out DIR`"
        )
    lines.append(f"checkpoint: {summary.checkpoint}")
    if (summary.out_dir / "report").is_dir():
        lines.append(f"report (table and plots, also on the MLflow parent run): {summary.out_dir / 'report'}")
    if summary.synced:
        lines.append(
            f"MLflow: experiment {summary.name!r}, parent run {summary.parent_run_id}; open it with: {ui_command(summary.tracking_uri, summary.name)}"
        )
    else:
        lines.append(
            f"MLflow: NOT up to date ({summary.tracking_uri} failed); run `kdsearch sync {summary.name}` once it is back"
        )
    return "\n".join(lines + next_steps(summary))


def next_steps(summary) -> list[str]:
    """The commands a user runs next on the best student: export it, then predict with it."""

    if "://" in summary.sweep_dir:
        source = summary.sweep_dir
    elif Path(summary.out_dir).resolve() == (Path.cwd() / "sweeps" / summary.name).resolve():
        source = summary.name  # under the default --storage: its name finds it
    else:
        source = str(summary.out_dir)
    out = f"{summary.name}-student/"
    return [
        "next:",
        f"  kdsearch export {source} --format onnx safetensors --out {out}   # the best student, checked, with its model card",
        f"  kdsearch predict {out} IMAGE...   # its top classes for your images",
    ]
