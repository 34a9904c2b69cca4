"""Training-step speed: our ResNeSt against gluoncv's, side by side in one process.

    python scripts/bench_train_step.py --model resnest50 --batch-size 8 --size 224 --steps 5

Both models get the same batch, the same loss (soft-label cross-entropy, as in scripts/train.py), the same
optimizer (SGD with Nesterov momentum) and ``hybridize(static_alloc=True, static_shape=True)``. Steps are
interleaved (ours, theirs, ours, ...) so that a busy machine slows both alike; each step is timed to
``mx.nd.waitall()`` and the medians are compared.
"""

import argparse
import json
import statistics
import time
from typing import Callable, Dict

import mxnet as mx
from mxnet import autograd, gluon

import resnest_gluon


def make_step(net, batch_size: int, size: int, classes: int, ctx: mx.Context) -> Callable[[], float]:
    """A closure that runs one training step of ``net`` and returns its seconds."""
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "nag", {"learning_rate": 0.01, "momentum": 0.9, "wd": 1e-4})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False)
    data = mx.nd.random.normal(shape=(batch_size, 3, size, size), ctx=ctx)
    target = mx.nd.one_hot(mx.nd.array(range(batch_size), ctx=ctx) % classes, classes)

    def step() -> float:
        mx.nd.waitall()
        tic = time.perf_counter()
        with autograd.record():
            loss = loss_fn(net(data), target)
        loss.backward()
        trainer.step(batch_size)
        mx.nd.waitall()
        return time.perf_counter() - tic

    return step


def bench(model: str, batch_size: int, size: int, steps: int, warmup: int, classes: int) -> Dict:
    """Times ``steps`` interleaved training steps of ours and gluoncv's ``model``; returns the figures."""
    import gluoncv

    ctx = mx.cpu()
    nets = {
        "resnest_gluon": resnest_gluon.get_model(model, classes=classes),
        "gluoncv": gluoncv.model_zoo.get_model(model, classes=classes),
    }
    runs = {name: make_step(net, batch_size, size, classes, ctx) for name, net in nets.items()}
    params = {name: sum(p.data().size for p in net.collect_params().values()) for name, net in nets.items()}
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in range(steps):
        for name, run in runs.items():
            times[name].append(run())
    result = dict(model=model, batch_size=batch_size, size=size, steps=steps, warmup=warmup)
    for name, values in times.items():
        median = statistics.median(values)
        result[name] = dict(
            ms_per_step=1000 * median,
            images_per_sec=batch_size / median,
            step_seconds=values,
            params=params[name],
        )
    result["speedup"] = result["gluoncv"]["ms_per_step"] / result["resnest_gluon"]["ms_per_step"]
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnest50", help="a model both libraries have")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--json", default=None, help="also write the figures here")
    return p.parse_args(argv)


def main(argv=None) -> Dict:
    args = parse_args(argv)
    result = bench(args.model, args.batch_size, args.size, args.steps, args.warmup, args.classes)
    print(f"{args.model} training step, batch {args.batch_size} at {args.size} px, median of {args.steps}:")
    for name in ("resnest_gluon", "gluoncv"):
        r = result[name]
        print(f"  {name:<14} {r['ms_per_step']:8.0f} ms/step  {r['images_per_sec']:6.2f} images/s")
    print(f"  ours / gluoncv speed: {result['speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result
