"""Fit the builtin execution-time coefficients from Vidur's profiling data.

Reads the real profiles in <data>/profiling (compute/<device>/meta-llama/<model>/mlp.csv and
network/<node>/all_reduce.csv) through the package's own Vidur-format readers, fits a compact
model per (device, model, TP) and per (network, TP), reports the error on held-out rows, and
writes vidur_env/data/time_model_coefficients.json, which the package loads at run time.

Model shapes (per layer, ms):
- linear ops: piecewise-linear in the token count T, knots at pairs (128k, 128k+8) up to
  1024 tokens so GEMM wave-quantisation steps are kept, then every 256 tokens (and sparser
  knots beyond 4096 for profiles that go that far);
- all-reduce: piecewise-linear in message bytes (T * hidden * 2), so one curve serves every model;
- decode attention: a + b*batch*kv + c*kv (bandwidth term plus per-sequence latency);
- prefill attention: c*chunk + b1*chunk^2 + b2*chunk*kv.
The attention files in the shared data are synthetic, so the attention terms are fitted on the
real measured points quoted in CALIBRATION.md (Llama-2-7B, A100, TP1) and scaled to other models
and devices by the runtime (see vidur_env/time_model/builtin.py).

Devices without an mlp.csv for a model (Llama-3 on H100) get the A100 curve times the per-TP
H100/A100 ratio of the two-device model nearest in layer size (Llama-3-8B <- Llama-2-7B,
Llama-3-70B <- Llama-2-70B, which has identical layer shapes). The table's "transfer" rows are
the pessimistic check: each two-device model predicted from the other, 4x different, model.

Usage: python benchmarks/fit_time_model.py [--data DIR] [--out PATH] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from vidur_env.hardware import DEVICES, MODELS, get_model  # noqa: E402
from vidur_env.time_model.errors import ProfileDataError  # noqa: E402
from vidur_env.time_model.profiles import all_reduce_profile, linear_ops_profile  # noqa: E402

OUT_PATH = REPO_ROOT / "vidur_env" / "data" / "time_model_coefficients.json"
TP_DEGREES = (1, 2, 4, 8)
HOLD_OUT_EVERY = 5
MIB = 1 << 20

LINEAR_KNOTS = [1, 8, 32] + [v for k in range(1, 17) for v in (64 * k, 64 * k + 8)] + list(range(1280, 4097, 256))
LONG_KNOTS = [5120, 6144, 8192, 10240, 12288, 16384, 20480, 24576, 28672, 32768]
ALL_REDUCE_KNOTS = [2048, 64 * 1024, 512 * 1024, MIB, 2 * MIB, 4 * MIB, 8 * MIB, 16 * MIB, 32 * MIB, 64 * MIB]

REFERENCE = {"model": "meta-llama/Llama-2-7b-hf", "device": "a100", "tp": 1}
# Real attention measurements, Llama-2-7B on A100 at TP1, ms per layer (CALIBRATION.md).
DECODE_POINTS = [  # (batch size, mean KV length, ms)
    (1, 32, 0.009), (8, 928, 0.110), (16, 928, 0.170), (32, 928, 0.294), (64, 928, 0.540),
    (128, 896, 0.962), (32, 3648, 1.106), (64, 3648, 2.104), (128, 3584, 3.747),
]
PREFILL_POINTS = [  # (chunk, prior KV length, ms)
    (96, 0, 0.015), (512, 0, 0.103), (480, 3584, 0.362), (1856, 0, 0.675),
    (1792, 2304, 1.043), (3456, 0, 1.937), (3520, 0, 2.062),
]


def default_data_dir() -> Path:
    """../shared/data/vidur next to the repo, or $VIDUR_SHARED_DATA/vidur."""
    override = os.environ.get("VIDUR_SHARED_DATA")
    return (Path(override) if override else REPO_ROOT.parent / "shared" / "data") / "vidur"


# ---------------------------------------------------------------------------------------- fitting
def hat_basis(x: np.ndarray, knots: list[float]) -> np.ndarray:
    """Columns j = the piecewise-linear function that is 1 at knot j and 0 at the others."""
    basis = np.zeros((len(x), len(knots)))
    for j in range(len(knots)):
        unit = np.zeros(len(knots))
        unit[j] = 1.0
        basis[:, j] = np.interp(x, knots, unit)
    return basis


def least_squares_relative(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients minimising the squared *relative* error, the error a latency model is judged by."""
    weights = 1.0 / y
    coef, *_ = np.linalg.lstsq(design * weights[:, None], y * weights, rcond=None)
    return coef


def knots_for(x: np.ndarray) -> list[float]:
    return [k for k in LINEAR_KNOTS + LONG_KNOTS if k <= x.max()]


def fit_piecewise(x: np.ndarray, y: np.ndarray, knots: list[float]) -> np.ndarray:
    return least_squares_relative(hat_basis(x, knots), y)


def relative_errors(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    return np.abs(predicted - actual) / actual


def held_out_piecewise(x: np.ndarray, y: np.ndarray, knots: list[float]) -> np.ndarray:
    """Relative errors on every 5th grid point when the fit never saw them."""
    held = np.arange(len(x)) % HOLD_OUT_EVERY == HOLD_OUT_EVERY // 2
    coef = fit_piecewise(x[~held], y[~held], knots)
    return relative_errors(np.interp(x[held], knots, coef), y[held])


def leave_one_out(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Relative error at each point of a fit on all the others (few points: no held-out split)."""
    errors = []
    for index in range(len(y)):
        keep = np.arange(len(y)) != index
        coef = least_squares_relative(design[keep], y[keep])
        errors.append(abs(design[index] @ coef - y[index]) / y[index])
    return np.array(errors)


def error_row(group: str, where: str, tp: int | str, errors: np.ndarray, **extra: object) -> dict:
    return {
        "group": group, "where": where, "tp": tp, "held_out": int(len(errors)),
        "mape_pct": round(100 * float(errors.mean()), 2), "max_pct": round(100 * float(errors.max()), 2), **extra,
    }


def rounded(values: np.ndarray | list[float]) -> list[float]:
    return [float(f"{v:.6g}") for v in values]


# ---------------------------------------------------------------------------------------- groups
def fit_linear_ops(root: Path) -> tuple[dict, list[dict], dict]:
    """Piecewise-linear linear-op curves for every profiled (device, model, TP)."""
    coefficients: dict = {}
    errors: list[dict] = []
    raw: dict = {}
    for device in sorted(DEVICES):
        for model in MODELS.values():
            path = root / "profiling" / "compute" / device / model.name / "mlp.csv"
            if not path.is_file():
                continue
            for tp in TP_DEGREES:
                try:
                    x, y = linear_ops_profile(path, model, tp)
                except ProfileDataError as error:
                    print(f"skip {device} {model.name} tp{tp}: {error}", file=sys.stderr)
                    continue
                knots = knots_for(x)
                errors.append(error_row("linear", f"{device} {model.name}", tp, held_out_piecewise(x, y, knots)))
                coef = fit_piecewise(x, y, knots)
                raw[(device, model.name, tp)] = (x, y, knots, coef)
                coefficients.setdefault(device, {}).setdefault(model.name, {})[f"tp{tp}"] = {
                    "knots": knots, "ms": rounded(coef), "source": f"fit to {path.relative_to(root)}",
                }
    return coefficients, errors, raw


def device_ratio(raw: dict, device: str, reference: str, tp: int, models: list[str]) -> np.ndarray:
    """Geometric-mean time ratio device/reference at LINEAR_KNOTS over ``models`` (same TP)."""
    logs = []
    for name in models:
        _, _, knots_dev, coef_dev = raw[(device, name, tp)]
        _, _, knots_ref, coef_ref = raw[(reference, name, tp)]
        logs.append(np.log(np.interp(LINEAR_KNOTS, knots_dev, coef_dev) / np.interp(LINEAR_KNOTS, knots_ref, coef_ref)))
    return np.exp(np.mean(logs, axis=0))


def scaled_curve(raw: dict, model: str, reference: str, tp: int, ratio: np.ndarray) -> tuple[list[float], np.ndarray]:
    """The reference-device curve of ``model`` times a per-knot ratio (held at its last value beyond 4096)."""
    _, _, knots, coef = raw[(reference, model, tp)]
    factors = np.interp(knots, LINEAR_KNOTS, ratio)
    return knots, coef * factors


def nearest_donor(name: str, candidates: list[str], tp: int) -> str:
    """The candidate whose per-worker layer weights are closest in size (Llama-3-70B -> Llama-2-70B, same shapes)."""
    size = MODELS[name].params_per_layer(tp)
    return min(candidates, key=lambda other: abs(np.log(MODELS[other].params_per_layer(tp) / size)))


def derive_missing_devices(raw: dict, coefficients: dict, errors: list[dict], reference: str = "a100") -> dict:
    """Curves for models profiled on the reference device only, plus the device-transfer check.

    A missing (device, model, TP) curve is the model's reference-device curve times the
    device/reference ratio of the two-device model nearest in layer size at that TP.
    """
    ratios: dict = {}
    for device in sorted(set(DEVICES) - {reference}):
        for tp in TP_DEGREES:
            both = sorted(
                name for (dev, name, t) in raw if dev == device and t == tp and (reference, name, tp) in raw
            )
            if not both:
                continue
            ratios[(device, tp)] = device_ratio(raw, device, reference, tp, both)
            for name in both:
                others = [other for other in both if other != name]
                if not others:
                    continue
                x, y, _, _ = raw[(device, name, tp)]
                knots, coef = scaled_curve(raw, name, reference, tp, device_ratio(raw, device, reference, tp, others))
                errors.append(error_row(
                    "linear transfer", f"{device} {name} from {'+'.join(others)}", tp,
                    relative_errors(np.interp(x, knots, coef), y),
                ))
            for (dev, name, t) in list(raw):
                if dev != reference or t != tp or (device, name, tp) in raw:
                    continue
                donor = nearest_donor(name, both, tp)
                knots, coef = scaled_curve(raw, name, reference, tp, device_ratio(raw, device, reference, tp, [donor]))
                coefficients.setdefault(device, {}).setdefault(name, {})[f"tp{tp}"] = {
                    "knots": knots, "ms": rounded(coef),
                    "source": f"derived: {reference} fit x {device}/{reference} ratio of {donor} at TP{tp}",
                }
    return ratios


def fit_all_reduce(root: Path) -> tuple[dict, list[dict]]:
    coefficients: dict = {}
    errors: list[dict] = []
    for network in sorted({device.network for device in DEVICES.values()}):
        path = root / "profiling" / "network" / network / "all_reduce.csv"
        if not path.is_file():
            continue
        for tp in TP_DEGREES[1:]:
            x, y = all_reduce_profile(path, tp)
            errors.append(error_row("all_reduce", network, tp, held_out_piecewise(x, y, ALL_REDUCE_KNOTS)))
            coefficients.setdefault(network, {})[f"tp{tp}"] = {
                "bytes": ALL_REDUCE_KNOTS, "ms": rounded(fit_piecewise(x, y, ALL_REDUCE_KNOTS)),
                "source": f"fit to {path.relative_to(root)}",
            }
    return coefficients, errors


def fit_attention(errors: list[dict]) -> tuple[dict, dict]:
    """Decode and prefill attention coefficients at the reference point (leave-one-out errors reported)."""
    batch, kv, decode_ms = (np.array(c, dtype=float) for c in zip(*DECODE_POINTS))
    decode_design = np.c_[np.ones_like(batch), batch * kv, kv]
    a, b, c = least_squares_relative(decode_design, decode_ms)
    where = "a100 Llama-2-7b-hf (leave-one-out)"
    errors.append(error_row("decode_attn", where, 1, leave_one_out(decode_design, decode_ms)))
    chunk, prior, prefill_ms = (np.array(c, dtype=float) for c in zip(*PREFILL_POINTS))
    prefill_design = np.c_[chunk, chunk * chunk, chunk * prior]
    p_lin, p_sq, p_kv = least_squares_relative(prefill_design, prefill_ms)
    errors.append(error_row("prefill_attn", where, 1, leave_one_out(prefill_design, prefill_ms)))
    reference_model = get_model(REFERENCE["model"])
    decode = {
        "form": "ms = a + (b * batch * kv * kv_bytes_ratio + c * kv) * reference_hbm / device_hbm",
        "a_ms": float(f"{a:.6g}"), "b_ms_per_batch_kv": float(f"{b:.6g}"), "c_ms_per_kv": float(f"{c:.6g}"),
        "reference_kv_bytes_per_token_per_layer": reference_model.kv_bytes_per_token_per_layer(REFERENCE["tp"]),
        "reference_hbm_tb_s": DEVICES[REFERENCE["device"]].hbm_tb_s,
        "source": "CALIBRATION.md real decode points (9)",
    }
    prefill = {
        "form": "ms = (c * chunk + b1 * chunk^2 + b2 * chunk * kv) * q_width_ratio * device_compute_ratio",
        "c_ms_per_token": float(f"{p_lin:.6g}"), "b1_ms_per_token_sq": float(f"{p_sq:.6g}"),
        "b2_ms_per_token_kv": float(f"{p_kv:.6g}"),
        "reference_q_width": reference_model.q_heads_per_worker(REFERENCE["tp"]) * reference_model.head_dim,
        "source": "CALIBRATION.md real prefill points (7)",
    }
    return decode, prefill


def compute_ratios(ratios: dict, reference: str = "a100") -> dict:
    """Large-batch (4096-token) linear-op time ratio per device: scales FLOP-bound prefill attention."""
    result = {reference: 1.0}
    for device in sorted(set(DEVICES) - {reference}):
        at_4096 = [ratio[LINEAR_KNOTS.index(4096)] for (dev, _), ratio in ratios.items() if dev == device]
        if at_4096:
            result[device] = float(f"{np.exp(np.mean(np.log(at_4096))):.6g}")
    return result


# ---------------------------------------------------------------------------------------- output
def compact_lists(text: str) -> str:
    """Put each list of numbers on one line so the JSON reads as a table, not a column."""
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def print_table(rows: list[dict]) -> None:
    print(f"{'group':16s} {'where':52s} {'tp':>3s} {'n':>4s} {'MAPE%':>7s} {'max%':>7s}")
    for row in rows:
        print(f"{row['group']:16s} {row['where']:52s} {row['tp']!s:>3s} {row['held_out']:>4d} "
              f"{row['mape_pct']:>7.2f} {row['max_pct']:>7.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="the shared .../data/vidur directory")
    parser.add_argument("--out", type=Path, default=OUT_PATH, help="coefficient JSON to write")
    parser.add_argument("--dry-run", action="store_true", help="print the error table, write nothing")
    args = parser.parse_args(argv)
    if not (args.data / "profiling").is_dir():
        parser.error(f"no profiling data under {args.data} (set --data or VIDUR_SHARED_DATA)")

    linear, errors, raw = fit_linear_ops(args.data)
    ratios = derive_missing_devices(raw, linear, errors)
    all_reduce, network_errors = fit_all_reduce(args.data)
    errors += network_errors
    decode, prefill = fit_attention(errors)
    print_table(errors)

    document = {
        "format": 1,
        "generated_by": "benchmarks/fit_time_model.py",
        "units": "ms per layer per TP worker; all-reduce per call, keyed by message bytes",
        "reference": REFERENCE,
        "linear_ops": linear,
        "all_reduce": all_reduce,
        "decode_attention": decode,
        "prefill_attention": prefill,
        "device_compute_ratio": compute_ratios(ratios),
        "held_out_error": errors,
    }
    if not args.dry_run:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(compact_lists(json.dumps(document, indent=1)) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
