"""GPU measurements for `scripts/gpu-check.sh`, within a time budget.

1. saliency: SmoothGrad-50 on ResNet-10, 32x32 images, at the runner's CUDA batch size:
   fp32 NCHW, channels_last, bf16, bf16 + channels_last, and bf16 + channels_last +
   torch.compile. Each is timed on whole batches for its share of the budget; images/s and
   the extrapolated time for `--images` (default 50,000) images are reported.
2. training: one epoch of SAT and of PGD-SAT on ResNet-10 (random 32x32 data and maps), with
   the loader resident and streaming: images/s of each.
3. AutoAttack (standard: apgd-ce, apgd-t, fab-t, square) at eps 8/255 on `--aa-images`
   (default 1000) test images of the PGD-SAT model: seconds and images/s.

Every part runs in a try block: a failure is recorded with its one-line error and the next
part runs. `--tiny` shrinks everything (smallcnn, tens of images) to run on a CPU: the smoke
test of this script.
Output: OUT/measurements.json and OUT/measurements.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch


def _budget(args) -> float:
    return args.deadline - time.monotonic()


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def saliency_part(args, dev: torch.device, share_s: float) -> dict[str, Any]:
    from satpipe.core import defaults
    from satpipe.pipeline.methods import get_method
    from satpipe.train.models import create_model

    size, samples = 32, args.samples
    batch = args.batch or defaults.batch_size(dev, size, size)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((batch, 3, size, size), generator=g).to(dev)
    y = torch.randint(0, 10, (batch,), generator=g).to(dev)
    configs = {
        "fp32": dict(amp=False, channels_last=False, compile=False),
        "fp32+channels_last": dict(amp=False, channels_last=True, compile=False),
        "bf16": dict(amp=True, channels_last=False, compile=False),
        "bf16+channels_last": dict(amp=True, channels_last=True, compile=False),
        "bf16+channels_last+compile": dict(amp=True, channels_last=True, compile=True),
    }
    if dev.type != "cuda":  # autocast bf16 and compile on a CPU say nothing about a GPU
        configs = {k: v for k, v in configs.items() if not v["amp"] and not v["compile"]}
    method = get_method("smoothgrad", samples=samples)
    method = method.for_device(dev, batch, (3, size, size))
    out: dict[str, Any] = {
        "images_target": args.images, "batch_size": batch, "samples": samples,
        "samples_batch_size": method.samples_batch_size, "configs": {},
    }  # fmt: skip
    each = share_s / len(configs)
    for name, c in configs.items():
        try:
            torch.manual_seed(0)
            net = create_model(args.model, 10).to(dev).eval()
            x = x0
            if c["channels_last"]:
                net = net.to(memory_format=torch.channels_last)
                x = x0.contiguous(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            if c["compile"]:
                net = torch.compile(net)
            gen = torch.Generator(device=dev).manual_seed(1)
            method(net, x, y, generator=gen, amp=c["amp"])  # warm-up (and compile)
            _sync(dev)
            warm = time.perf_counter() - t0
            n, start = 0, time.perf_counter()
            while True:
                method(net, x, y, generator=gen, amp=c["amp"])
                n += batch
                _sync(dev)
                spent = time.perf_counter() - start
                if spent >= each or n >= args.images or _budget(args) < 5:
                    break
            rate = n / spent
            out["configs"][name] = {
                "images_timed": n, "seconds": round(spent, 3), "img_s": round(rate, 1),
                "warmup_s": round(warm, 2),
                "extrapolated_s_for_target": round(args.images / rate, 1),
            }  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - recorded, the next config runs
            out["configs"][name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return out


def training_part(args, dev: torch.device, root: Path) -> dict[str, Any]:
    from satpipe.data.synthetic import write_random_pair
    from satpipe.train.config import TrainConfig
    from satpipe.train.trainer import train

    data, sal = write_random_pair(str(root), "train", args.train_images, 32, channels=3,
                                  n_test=args.aa_images)  # fmt: skip
    out: dict[str, Any] = {"images": args.train_images, "runs": {}}
    for variant in ("sat", "pgd-sat"):
        for mode in ("resident", "streaming"):
            key = f"{variant}/{mode}"
            if _budget(args) < 30:
                out["runs"][key] = {"skipped": "time budget spent"}
                continue
            try:
                run = train(
                    TrainConfig(variant=variant, data=data, saliency=sal, model=args.model,
                                out=str(root / key.replace("/", "-")), epochs=1,
                                batch_size=args.train_batch, loader_mode=mode, device=str(dev),
                                attack_steps=args.attack_steps)
                )  # fmt: skip
                record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
                out["runs"][key] = {
                    "img_s": round(record["images_per_s"], 1),
                    "seconds": round(record["seconds"], 2),
                    "test_acc": record["test_acc"],
                    "run": str(run),
                }
            except Exception as exc:  # noqa: BLE001
                out["runs"][key] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    return out


def autoattack_part(args, dev: torch.device, root: Path, training: dict) -> dict[str, Any]:
    from satpipe.train.eval.evaluate import evaluate

    run = (training.get("runs", {}).get("pgd-sat/resident") or {}).get("run")
    run = run or (training.get("runs", {}).get("pgd-sat/streaming") or {}).get("run")
    if run is None:
        return {"skipped": "no trained model (training part failed or was skipped)"}
    if _budget(args) < 20:
        return {"skipped": "time budget spent"}
    t0 = time.perf_counter()
    results = evaluate(
        run, attacks=("autoattack",), eps=(0,), attack_eps={"autoattack": (8,)},
        n_examples=args.aa_images, device=str(dev), strict=False, out=str(root / "aa"),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    return {
        "images": args.aa_images, "seconds": round(seconds, 1),
        "img_s": round(args.aa_images / seconds, 2),
        "clean": results.get("clean"), "autoattack": results["attacks"].get("autoattack"),
    }  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU measurements ({report['device']})", ""]
    sal = report.get("saliency", {})
    if "configs" in sal:
        lines += [
            f"SmoothGrad-{sal['samples']} {report['model']} 32x32, batch {sal['batch_size']}, "
            f"{sal['samples_batch_size']} copies per pass; extrapolated to "
            f"{sal['images_target']} images:",
            "",
            "| config | img/s | s for target | warm-up s |",
            "|---|---|---|---|",
        ]
        for name, r in sal["configs"].items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error'][:80]} | | |")
            else:
                lines.append(
                    f"| {name} | {r['img_s']} | {r['extrapolated_s_for_target']} | "
                    f"{r['warmup_s']} |"
                )
        lines.append("")
    train = report.get("training", {})
    if "runs" in train:
        lines += [f"One {report['model']} epoch on {train['images']} images:", "",
                  "| variant/loader | img/s | s |", "|---|---|---|"]  # fmt: skip
        for key, r in train["runs"].items():
            lines.append(f"| {key} | {r.get('img_s', r.get('error') or r.get('skipped'))} | "
                         f"{r.get('seconds', '')} |")  # fmt: skip
        lines.append("")
    aa = report.get("autoattack", {})
    if "seconds" in aa:
        lines.append(f"AutoAttack standard, eps 8/255, {aa['images']} images: {aa['seconds']} s "
                     f"({aa['img_s']} img/s; the whole `evaluate` call).")  # fmt: skip
    elif aa:
        lines.append(f"AutoAttack: {aa.get('error') or aa.get('skipped')}")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget", type=float, default=300.0, help="seconds for all parts")
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke sizes (CPU)")
    args = p.parse_args()
    tiny = args.tiny
    args.model = "smallcnn" if tiny else "resnet10"
    args.images = 64 if tiny else 50_000
    args.samples = 2 if tiny else 50
    args.batch = 16 if tiny else None
    args.train_images = 64 if tiny else 10_000
    args.train_batch = 32 if tiny else 256
    args.attack_steps = 1 if tiny else 7
    args.aa_images = 8 if tiny else 1000
    args.deadline = time.monotonic() + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from satpipe.core.device import resolve_device

    dev = resolve_device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    report: dict[str, Any] = {
        "device": name, "torch": torch.__version__, "tiny": tiny, "model": args.model,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for part, fn in (
            ("saliency", lambda: saliency_part(args, dev, 0.35 * args.budget)),
            ("training", lambda: training_part(args, dev, Path(tmp))),
            ("autoattack", lambda: autoattack_part(args, dev, Path(tmp), report["training"])),
        ):
            t0 = time.perf_counter()
            try:
                report[part] = fn()
            except Exception as exc:  # noqa: BLE001 - recorded, the next part runs
                report[part] = {"error": f"{type(exc).__name__}: {exc}"[:400],
                                "traceback": traceback.format_exc()[-2000:]}  # fmt: skip
            report[part]["part_seconds"] = round(time.perf_counter() - t0, 1)
            # Written after every part: a run cut short keeps what it measured.
            (out / "measurements.json").write_text(json.dumps(report, indent=2) + "\n")
            with contextlib.suppress(Exception):
                (out / "measurements.md").write_text(markdown(report))
    for part in ("training", "autoattack"):  # runs lived in the temporary folder
        for r in report.get(part, {}).get("runs", {}).values():
            r.pop("run", None)
    (out / "measurements.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "measurements.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
