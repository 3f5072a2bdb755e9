"""Where the time of a training step and of an inference batch goes (benchmarks/README.md).

For each method: torch.profiler over a few bare training steps (the same step as throughput.py's bare loop)
and a few inference batches, printed as the operators' table (top rows by self time on the device that
computes), the wall time per step and, on a GPU, the fraction of it the GPU spends in kernels (a low fraction
means the step is bound by the host launching kernels, not by the GPU's arithmetic or memory). For MIMMO it
also times the exit adapters alone (forward + backward on their real input shapes), the part of the step the
stage-1 exit's widening (64x32x32 -> 512x32x32) costs.

    python benchmarks/profile_step.py --methods mimo,mimmo --device auto [--bf16] [--channels-last]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
import throughput  # noqa: E402  (the same setup as the throughput benchmark)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="mimo,mimmo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--infer-batch", type=int, default=None)
    parser.add_argument("--rows", type=int, default=18, help="rows of each operator table")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--exit-path", default="auto", choices=["auto", "fused", "reference"])
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def profiled(fn, steps: int, device: torch.device) -> tuple[str, float, float | None, str]:
    """Profile ``steps`` calls of ``fn`` after 2 warm-ups: (table, wall ms per call, device busy fraction)."""
    for _ in range(2):
        fn()
    throughput.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        throughput.synchronize(device)
        wall = (time.perf_counter() - start) / steps
    averages = prof.key_averages()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    busy = None
    if device.type == "cuda":
        kernel_us = sum(e.self_device_time_total for e in averages if e.device_type.name == "CUDA")
        busy = kernel_us / 1e6 / steps / wall
    return averages.table(sort_by=sort, row_limit=ROWS), 1e3 * wall, busy, sort


def time_ms(fn, device: torch.device, repeats: int = 5) -> str:
    for _ in range(2):
        fn()
    values = []
    for _ in range(repeats):
        throughput.synchronize(device)
        start = time.perf_counter()
        fn()
        throughput.synchronize(device)
        values.append(1e3 * (time.perf_counter() - start))
    return f"{statistics.median(values):.2f} ms [{min(values):.2f}-{max(values):.2f}]"


def adapter_line(index: int, adapter: torch.nn.Module, h: torch.Tensor, device: torch.device,
                 args: argparse.Namespace) -> str:
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    h = h.detach().contiguous(memory_format=layout).requires_grad_()

    def train_step() -> None:
        with throughput.autocast(args, device):
            out = adapter(h)
        out.float().sum().backward()

    def eval_step() -> None:
        with torch.inference_mode(), throughput.autocast(args, device):
            adapter(h)

    adapter.train()
    train = time_ms(train_step, device)
    adapter.eval()
    evaluation = time_ms(eval_step, device)
    adapter.train()
    return (f"exit {index + 1}: input {tuple(h.shape)} -> {adapter[0].out_channels}: train fwd+bwd {train}, "
            f"eval fwd {evaluation}")


def exit_adapter_times(method, rows: int, device: torch.device, args: argparse.Namespace) -> list[str]:
    """Forward+backward (training) and forward (eval) ms of each exit adapter alone, on its real input shape."""
    network = method.network
    x = torch.randn(rows, network.backbone.stem[0].in_channels, *throughput.INPUT_SHAPE[1:], device=device)
    with torch.no_grad():
        stages = network.backbone.features(x)
    return [adapter_line(i, adapter, h, device, args)
            for i, (adapter, h) in enumerate(zip(network.exits, stages[:-1], strict=False))]


def profile_method(name: str, args: argparse.Namespace, targs: argparse.Namespace, device: torch.device) -> None:
    from mimmo.data.datasets import Normalizer
    from mimmo.methods.base import Progress, mixture_log_probs
    from mimmo.training import build_method_from_config

    cfg = throughput.method_config(name, targs)
    method = build_method_from_config(cfg, throughput.INPUT_SHAPE, throughput.NUM_CLASSES).to(device)
    if args.channels_last:
        method.to(memory_format=torch.channels_last)
    splits = throughput.fabricated_splits(max(args.batch_size * method.data_streams, args.infer_batch))
    normalizer = Normalizer.fit(splits.train.images).to(device)
    optimizer = torch.optim.Adam(method.parameters(), lr=0.005)
    streams = method.data_streams
    images = splits.train.images[:args.batch_size * streams].to(device)
    labels = splits.train.labels[:args.batch_size * streams].to(device)
    if streams > 1:
        images = images.unflatten(0, (args.batch_size, streams))
        labels = labels.unflatten(0, (args.batch_size, streams))
    progress = Progress(epoch=0, num_epochs=100, fraction=0.0, num_train=45_000)

    def prepare(u8: torch.Tensor) -> torch.Tensor:
        x = normalizer(u8.flatten(0, 1) if u8.dim() == 5 else u8)
        x = x.unflatten(0, u8.shape[:2]) if u8.dim() == 5 else x
        return x.contiguous(memory_format=torch.channels_last) if args.channels_last and x.dim() == 4 else x

    def train_step() -> None:
        with throughput.autocast(targs, device):
            loss = method.training_loss(prepare(images), labels, progress).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    infer_images = splits.train.images[:args.infer_batch].to(device)

    def infer() -> None:
        with torch.inference_mode(), throughput.autocast(targs, device):
            prediction = method(prepare(infer_images))
            mixture_log_probs(prediction.logits, prediction.weights)

    for label, fn, mode, batch in (("training step (bare loop)", train_step, True, args.batch_size),
                                   ("inference", infer, False, args.infer_batch)):
        method.train(mode)
        table, ms, busy, sort = profiled(fn, args.steps, device)
        print(f"\n=== {name}: {label}, batch {batch}: {ms:.2f} ms"
              + (f", GPU busy {100 * busy:.0f}% of the wall time" if busy is not None else "") + f"; sorted by {sort}")
        print(table)
    method.train()
    if hasattr(method, "network"):
        rows = args.batch_size * getattr(method, "repetitions", 1)
        print(f"\n=== {name}: exit adapters alone ({rows} rows, as in a training step)")
        print("\n".join(exit_adapter_times(method, rows, device, targs)))


ROWS = 18


def main(argv: list[str] | None = None) -> None:
    global ROWS
    args = parse_args(argv)
    ROWS = args.rows
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    args.infer_batch = args.infer_batch or (500 if device.type == "cuda" else 128)
    from mimmo.models.backbone import set_exit_path

    set_exit_path(args.exit_path)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {device} ({name}), threads {torch.get_num_threads()}, "
          f"bf16 {args.bf16}, channels_last {args.channels_last}, exit path {args.exit_path}")
    targs = throughput.parse_args(["--batch-size", str(args.batch_size)] + (["--bf16"] if args.bf16 else [])
                                  + (["--channels-last"] if args.channels_last else []))
    for method_name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        profile_method(method_name, args, targs, device)


if __name__ == "__main__":
    main()
