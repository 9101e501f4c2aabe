"""Benchmark of the influence stage (cnn6, 5,000 MNIST samples, batch 32): `make bench`.

Beside cnn6, NNC's LeNet template read from an .nnp file (``write_lenet_nnp``, 28x28): its training
epoch, mini-batch products (forward-mode and fused against double backward) and Ours/Hara, as rows
``lenet_*`` in epochs of its own training (the fast paths reach .nnp networks).

Each measurement runs in its own subprocess (`--task NAME`), which reports its seconds and its
peak resident memory (ru_maxrss); the parent prints a table and writes bench/results.json.
Ratios are to one training epoch measured in the same run (the machine is shared: only ratios
taken side by side mean anything). Influence stages run `--steps` steps of the recursion
(default 20 of the 157 of the last epoch) and are extrapolated linearly to the whole epoch as
first step (graph building) + per-step cost x remaining steps; `--steps 0` runs them whole.

    .venv/bin/python bench/bench_influence.py [--steps N] [--n-train 5000] [--loop 256] [--skip TASKS]

Influence functions: `ekfac` runs the whole Influence_functions_ekfac stage (two factor passes and
the scores); `minres` times one full-batch Hessian-vector pass (one MINRES iteration) and the
scoring pass and gives the stage at `--minres-iters` iterations (default 15, the detection run
of docs/measurements.md) as that many passes plus the residual's pass plus the scores.
Peak memory with all of MNIST (50,000 training and 10,000 validation images) in memory:
`full_mnist_memory` (Ours, `--steps` steps of the recursion) and `ekfac_full_mnist_memory` (EK-FAC's
three passes over the first `--ekfac-memory-rows` training rows, default 2,048; 0: all 50,000).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/bench_influence_work"))
BATCH, LR = 32, 0.05


#: the networks measured: cnn6 (built in, 32x32) and an NNC-style LeNet read from an .nnp file
#: (``write_lenet_nnp``; 28x28), whose tasks are named ``lenet_<task>``
NETS = ("cnn6", "lenet")
LENET_TASKS = ("train", "hvp", "ours", "ours_ref", "hara")


def write_lenet_nnp(path: Path) -> None:
    """NNC's LeNet template as an .nnp (``nnabla.utils.save``): 28x28 pixel values (no image
    normalisation), MulScalar 1/255, Convolution 16 maps 5x5 unpadded, MaxPooling 2, Tanh, Convolution
    30 maps 5x5, MaxPooling 2, Tanh, Affine 150, Tanh, Affine 10, Softmax."""
    from collections import OrderedDict

    import nnabla as nn
    import nnabla.functions as F
    import nnabla.parametric_functions as PF
    from nnabla.utils.save import save
    scope: OrderedDict = OrderedDict()
    with nn.parameter_scope("", scope):
        x = nn.Variable((1, 1, 28, 28))
        h = F.mul_scalar(x, 1.0 / 255.0)
        h = F.tanh(F.max_pooling(PF.convolution(h, 16, (5, 5), name="Convolution"), (2, 2)))
        h = F.tanh(F.max_pooling(PF.convolution(h, 30, (5, 5), name="Convolution_2"), (2, 2)))
        h = F.tanh(PF.affine(h, 150, name="Affine"))
        y = F.softmax(PF.affine(h, 10, name="Affine_2"))
        save(str(path), {"networks": [{"name": "runtime", "batch_size": 1, "outputs": {"y": y}, "names": {"x": x}}],
                         "executors": [{"name": "runtime", "network": "runtime", "data": ["x"], "output": ["y"],
                                        "no_image_normalization": True}]})


def _setup(n_train, n_val=1000, net="cnn6"):
    import logging
    logging.getLogger("nnabla").setLevel(logging.WARNING)
    from cleansing.paths import RunPaths
    from cleansing.train import TrainConfig
    from datasets import load_dataset
    from models.nnp import nnp_image_size
    model = "cnn6" if net == "cnn6" else str(WORK / f"{net}.nnp")
    data = load_dataset("mnist", 0, data_dir=str(MNIST), n_train=n_train, n_val=n_val, n_test=1000,
                        image_size=nnp_image_size(model))
    cfg = TrainConfig(model=model, epochs=1, batch_size=BATCH, lr=LR, augment=True)
    return data, cfg, RunPaths(WORK if net == "cnn6" else WORK / net)


def task(name: str, args) -> dict:
    import numpy as np

    from cleansing.train import load_training, train_with_trace
    from cleansing.trial import validation_loss_grad, validation_loss_stats_grad
    from common.params_io import load_params
    from datasets.batches import training_batch
    from models.autodiff import vdot, vnorm
    from sgd_influence.infl import sgd_influence
    out = {}
    net = "cnn6"
    if name.startswith("lenet_"):
        net, name = "lenet", name[len("lenet_"):]
    if name == "full_mnist_memory":  # peak memory of Ours' stage on all 50,000 training samples
        from cleansing.trace import make_schedule
        from cleansing.train import new_learner
        full, cfg, _ = _setup(None, None)
        learner = new_learner(cfg, full, 0)  # memory does not depend on the weights' values
        trace = make_schedule(len(full.train), 1, BATCH, LR, 0)
        t0 = time.perf_counter()
        u, u_stats = validation_loss_grad(learner, full), validation_loss_stats_grad(learner, full)
        out["u_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = args.steps or 20
        sgd_influence(learner, full, trace, u, True, max_steps=n, u_stats=u_stats)
        out.update(n_train=len(full.train), n_val=len(full.val), steps_run=n,
                   influence_seconds=time.perf_counter() - t0)
        return out
    if name == "ekfac_full_mnist_memory":  # peak memory of the EK-FAC stage with all of MNIST in memory
        from dataclasses import replace

        from cleansing.train import new_learner
        from datasets.base import Split
        from influence_functions.ekfac import EkfacOptions, ekfac_influence
        full, cfg, _ = _setup(None, None)
        learner = new_learner(cfg, full, 0)  # memory does not depend on the weights' values
        t0 = time.perf_counter()
        u = validation_loss_grad(learner, full)
        out["u_seconds"] = time.perf_counter() - t0
        rows = args.ekfac_memory_rows or len(full.train)
        tr = full.train  # views: all 50,000 training images stay in memory
        part = replace(full, train=Split(tr.images[:rows], tr.labels[:rows], tr.ids[:rows]))
        t0 = time.perf_counter()
        scores, info = ekfac_influence(learner, part, u, 0.1, EkfacOptions("sampled"), seed=0)
        out.update(n_train=len(full.train), n_val=len(full.val), rows_fitted_and_scored=rows,
                   influence_seconds=time.perf_counter() - t0,
                   **{f"{k}_seconds": v for k, v in info.seconds.items()})
        return out
    data, cfg, paths = _setup(args.n_train, net=net)
    work = paths.root
    if name == "train":  # one epoch with the trace and Hara's cache (also prepares the others)
        t0 = time.perf_counter()
        train_with_trace(cfg, data, paths, 0, save_hara=True, show_progress=False)
        out["seconds"] = time.perf_counter() - t0
        out["steps"] = -(-len(data.train) // BATCH)
        return out
    trace, learner = load_training(cfg, data, paths, 0)
    steps = trace.last_epoch_steps()
    if name == "products":  # batched vs batch-1 loop, inference-mode BN (a batch of one has no batch stats)
        u = validation_loss_grad(learner, data)
        n = args.loop
        idx = np.arange(n)
        x, y = training_batch(data, idx, None, False)
        res = {}
        for method in ("taps", "eps"):
            learner.per_sample_grad_dot(x[:BATCH], y[:BATCH], u, train=False, method=method)  # build
            t0 = time.perf_counter()
            res[method] = np.concatenate([learner.per_sample_grad_dot(x[s:s + BATCH], y[s:s + BATCH], u,
                                                                      train=False, method=method)
                                          for s in range(0, n, BATCH)])
            out[f"batched_{method}_seconds"] = (time.perf_counter() - t0) * len(data.train) / n
        learner.mean_loss_grad([(x[:1], y[:1])])
        t0 = time.perf_counter()
        loop = np.array([vdot(u, learner.mean_loss_grad([(x[i:i + 1], y[i:i + 1])])) for i in range(n)])
        out["loop_seconds"] = (time.perf_counter() - t0) * len(data.train) / n
        scale = np.abs(loop).max()
        out["max_rel_diff_taps"] = float(np.abs(res["taps"] - loop).max() / scale)
        out["max_rel_diff_eps"] = float(np.abs(res["eps"] - loop).max() / scale)
        out["samples_timed"] = n
        return out
    if name == "hvp":  # one mini-batch, training-mode BN, trained weights
        u = validation_loss_grad(learner, data)
        idx, seeds = trace.batch(int(steps[0]))
        x, y = training_batch(data, idx, seeds, True)
        t = {}
        vals = {}
        calls = {"double_backward": lambda: learner.hessian_vector_product(x, y, u, method="double_backward"),
                 "forward": lambda: learner.hessian_vector_product(x, y, u, method="forward"),
                 "fused": lambda: learner.grad_dot_and_hvp(x, y, u)[1],
                 "dots_eps": lambda: learner.per_sample_grad_dot(x, y, u, method="eps"),
                 "dots_taps": lambda: learner.per_sample_grad_dot(x, y, u, method="taps"),
                 "removal_dots_double_backward": lambda: learner.removal_grad_dot(x, y, u),
                 "train_step": lambda: learner.sgd_step(x, y, 0.0)}
        for k, f in calls.items():
            vals[k] = f()
        state = learner.state()
        for k in calls:  # interleaved repetitions, best of 3
            t[k] = []
        for _ in range(3):
            for k, f in calls.items():
                t0 = time.perf_counter()
                f()
                t[k].append(time.perf_counter() - t0)
        learner.set_state(state)
        ref = vals["double_backward"]
        for k in ("double_backward", "forward", "fused"):
            out[f"{k}_seconds"] = min(t[k])
            out[f"{k}_rel_err"] = vnorm({p: vals[k][p] - ref[p] for p in ref}) / vnorm(ref)
        for k in ("dots_eps", "dots_taps", "removal_dots_double_backward", "train_step"):
            out[f"{k}_seconds"] = min(t[k])
        rd = vals["removal_dots_double_backward"]
        out["fused_dots_rel_err"] = float(np.abs(learner.grad_dot_and_hvp(x, y, u)[0] - rd).max() / np.abs(rd).max())
        return out
    if name.startswith(("ours", "hara")):  # ours / hara / ours_ref / hara_ref
        u = validation_loss_grad(learner, data)
        ref = name.endswith("_ref")
        state_at = (lambda s: load_params(paths.step_params(0, s))) if name.startswith("hara") else None
        n = args.steps or len(steps)
        if ref:  # the straightforward way: double-backward HVP and removal products, separate calls
            learner.default_hvp, learner.default_dot = "double_backward", "eps"
        kw = dict(state_at=state_at, fused=not ref, prefetch=not ref,
                  u_stats=validation_loss_stats_grad(learner, data))
        t0 = time.perf_counter()
        sgd_influence(learner, data, trace, u, True, max_steps=1, **kw)  # builds the graphs
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        infl = sgd_influence(learner, data, trace, u, True, max_steps=n, **kw)
        sec = time.perf_counter() - t0
        full = sec if n >= len(steps) else first + sec / n * (len(steps) - 1)
        out.update(steps_run=n, steps_epoch=len(steps), first_step_seconds=first, per_step_seconds=sec / n,
                   seconds=full)
        np.save(work / f"infl_{name}.npy", infl)
        return out
    if name == "ekfac":
        from influence_functions.ekfac import EkfacOptions, ekfac_influence
        u = validation_loss_grad(learner, data)
        t0 = time.perf_counter()
        scores, info = ekfac_influence(learner, data, u, 0.1, EkfacOptions("sampled"), seed=0)
        out["seconds"] = time.perf_counter() - t0
        out.update({f"{k}_seconds": v for k, v in info.seconds.items()})
        np.save(WORK / "infl_ekfac.npy", scores)
        return out
    if name == "minres":
        from influence_functions.inverse import ParamSpace, full_hvp, influence_scores
        u = validation_loss_grad(learner, data)
        space = ParamSpace(learner)
        hvp = full_hvp(learner, data, space)
        v = space.flatten(u)
        from datasets.batches import split_batches
        from influence_functions.inverse import FULL_PASS_ROWS_32PX, chunk_rows
        sizes = {len(x) for x, _ in split_batches(data, data.train, chunk_rows(learner, data, FULL_PASS_ROWS_32PX))}
        for size in sizes:  # build the graphs on one batch of each size
            x, y = training_batch(data, np.arange(size), None, False)
            learner.hessian_vector_product(x, y, u, train=False)
        t0 = time.perf_counter()
        hvp(v)
        out["hvp_pass_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        influence_scores(learner, data, u)
        out["scores_seconds"] = time.perf_counter() - t0
        out["iterations"] = args.minres_iters
        out["seconds"] = (args.minres_iters + 1) * out["hvp_pass_seconds"] + out["scores_seconds"]
        return out
    raise SystemExit(f"unknown task {name}")


def run_task(name, args) -> dict:
    cmd = [sys.executable, __file__, "--task", name, "--steps", str(args.steps), "--n-train", str(args.n_train),
           "--loop", str(args.loop), "--minres-iters", str(args.minres_iters),
           "--ekfac-memory-rows", str(args.ekfac_memory_rows)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"task {name} failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["wall_seconds"] = time.perf_counter() - t0
    print(f"  {name}: {res}", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--loop", type=int, default=256)
    ap.add_argument("--minres-iters", type=int, default=15)
    ap.add_argument("--ekfac-memory-rows", type=int, default=2048,
                    help="ekfac_full_mnist_memory: training rows the EK-FAC passes run over, all 50,000 in memory "
                         "(default %(default)s; 0: all, about 25 x the 2,000-sample stage)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results.json"), help="where to write the table")
    ap.add_argument("--skip", default="", help="comma-separated tasks to leave out")
    args = ap.parse_args()
    if args.task:
        res = task(args.task, args)
        res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return
    if not (MNIST / "train-images-idx3-ubyte.gz").is_file():
        print(f"bench: real MNIST not found at {MNIST}; put the four IDX .gz files there. Skipped.")
        return
    import shutil
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    skip = set(filter(None, args.skip.split(",")))
    R = {}
    print(f"bench: cnn6 and an NNC LeNet (.nnp), {args.n_train} MNIST samples, batch {BATCH}; one process per task",
          flush=True)
    tasks = ["train", "products", "hvp", "ours", "ours_ref", "hara", "hara_ref", "ekfac", "minres",
             "full_mnist_memory", "ekfac_full_mnist_memory"] + [f"lenet_{t}" for t in LENET_TASKS]
    if not all(t in skip for t in tasks if t.startswith("lenet_")):
        write_lenet_nnp(WORK / "lenet.nnp")
    for name in tasks:
        if name not in skip:
            R[name] = run_task(name, args)
    import numpy as np
    epoch = R["train"]["seconds"]
    rows = {}

    def row(key, seconds, **extra):
        rows[key] = {"seconds": round(seconds, 3), "epochs": round(seconds / epoch, 3), **extra}

    row("train_epoch", epoch, peak_rss_mib=round(R["train"]["peak_rss_mib"], 1))
    if "products" in R:
        p = R["products"]
        row("products_batched_taps", p["batched_taps_seconds"], max_rel_diff_vs_loop=p["max_rel_diff_taps"],
            note=f"{p['samples_timed']} samples timed, extrapolated")
        row("products_batched_eps", p["batched_eps_seconds"], max_rel_diff_vs_loop=p["max_rel_diff_eps"])
        row("products_batch1_loop", p["loop_seconds"])
    if "hvp" in R:
        h = R["hvp"]
        for k in ("double_backward", "forward", "fused"):
            row(f"hvp_{k}", h[f"{k}_seconds"], rel_err_vs_double_backward=h[f"{k}_rel_err"],
                steps_per_train_step=round(h[f"{k}_seconds"] / h["train_step_seconds"], 2))
        for k in ("dots_eps", "dots_taps", "removal_dots_double_backward", "train_step"):
            row(f"minibatch_{k}", h[f"{k}_seconds"])
        rows["hvp_fused"]["dots_rel_err_vs_double_backward"] = h["fused_dots_rel_err"]
    for name in ("ours", "ours_ref", "hara", "hara_ref"):
        if name in R:
            r = R[name]
            extra = {"peak_rss_mib": round(r["peak_rss_mib"], 1),
                     "steps_run": r["steps_run"], "steps_epoch": r["steps_epoch"]}
            if not name.endswith("_ref") and f"{name}_ref" in R:
                a = np.load(WORK / f"infl_{name}.npy")
                b = np.load(WORK / f"infl_{name}_ref.npy")
                extra["max_rel_diff_vs_ref"] = float(np.abs(a - b).max() / np.abs(b).max())
            row(f"influence_{name}", r["seconds"], **extra)
    if "lenet_train" in R:  # the LeNet read from an .nnp: ratios to its own training epoch
        lenet_epoch = R["lenet_train"]["seconds"]

        def lenet_row(key, seconds, **extra):
            rows[f"lenet_{key}"] = {"seconds": round(seconds, 3), "epochs": round(seconds / lenet_epoch, 3), **extra}
        lenet_row("train_epoch", lenet_epoch, peak_rss_mib=round(R["lenet_train"]["peak_rss_mib"], 1),
                  note="NNC LeNet template read from an .nnp, 28x28; x epoch: of its own epoch")
        if "lenet_hvp" in R:
            h = R["lenet_hvp"]
            for k in ("double_backward", "forward", "fused"):
                lenet_row(f"hvp_{k}", h[f"{k}_seconds"], rel_err_vs_double_backward=h[f"{k}_rel_err"],
                          steps_per_train_step=round(h[f"{k}_seconds"] / h["train_step_seconds"], 2))
            lenet_row("minibatch_dots_taps", h["dots_taps_seconds"])
            lenet_row("minibatch_dots_eps", h["dots_eps_seconds"])
        for name in ("ours", "ours_ref", "hara"):
            if f"lenet_{name}" in R:
                r = R[f"lenet_{name}"]
                extra = {"steps_run": r["steps_run"], "steps_epoch": r["steps_epoch"]}
                if name == "ours" and "lenet_ours_ref" in R:
                    a, b = (np.load(WORK / "lenet" / f"infl_{n}.npy") for n in ("ours", "ours_ref"))
                    extra["max_rel_diff_vs_ref"] = float(np.abs(a - b).max() / np.abs(b).max())
                lenet_row(f"influence_{name}", r["seconds"], **extra)
    if "ekfac" in R:
        e = R["ekfac"]
        row("influence_functions_ekfac", e["seconds"], peak_rss_mib=round(e["peak_rss_mib"], 1),
            **{k: round(e[k], 1) for k in ("factors_seconds", "correction_seconds", "scores_seconds")})
    if "minres" in R:
        m = R["minres"]
        row(f"influence_functions_minres_{m['iterations']}it", m["seconds"], peak_rss_mib=round(m["peak_rss_mib"], 1),
            hvp_pass_seconds=round(m["hvp_pass_seconds"], 1), scores_seconds=round(m["scores_seconds"], 1),
            note="(iterations + 1 residual pass) x one full HVP pass + scores")
    if "full_mnist_memory" in R:
        m = R["full_mnist_memory"]
        rows["influence_ours_full_mnist_memory"] = {
            "peak_rss_mib": round(m["peak_rss_mib"], 1), "n_train": m["n_train"], "n_val": m["n_val"],
            "steps_run": m["steps_run"], "note": "measured: all of MNIST in memory, u over the 10,000 "
            "validation images, then the recursion (initial weights; memory does not depend on them)"}
    if "ekfac_full_mnist_memory" in R:
        m = R["ekfac_full_mnist_memory"]
        rows["influence_functions_ekfac_full_mnist_memory"] = {
            "peak_rss_mib": round(m["peak_rss_mib"], 1), "n_train": m["n_train"], "n_val": m["n_val"],
            "rows_fitted_and_scored": m["rows_fitted_and_scored"], "note": "measured: all of MNIST in memory, u over "
            "the 10,000 validation images, then the EK-FAC factor, correction and scoring passes over the first "
            "rows (initial weights; per-batch arrays and factors do not grow with the rows, the scores by 8 bytes "
            "a row)"}
    # Projection: eval_sgd_influence.py -ds mnist -nt 10 (50,000 samples, 20 epochs, batch 32, 3 methods).
    T = -(-50000 // BATCH)
    step = epoch / R["train"]["steps"]
    per_trial = {"train_20_epochs": 20 * T * step,
                 "retrain_last_epoch_x37": 37 * T * step,  # 12 n x 3 methods, n=0 once
                 }
    if "ours" in R:
        per_trial["ours"] = R["ours"]["per_step_seconds"] * T
    if "hara" in R:
        per_trial["hara"] = R["hara"]["per_step_seconds"] * T
    cpu = 10 * sum(per_trial.values())
    rows["projection_mnist_nt10_cpu"] = {"seconds": round(cpu), "hours": round(cpu / 3600, 1),
                                         "hours_with_j2": round(cpu / 3600 / 2, 1),
                                         "per_trial_seconds": {k: round(v) for k, v in per_trial.items()},
                                         "note": "from measured per-step costs; evaluation passes excluded"}
    # GPU: assume one modern GPU runs a cnn6 batch-32 step in ~3 ms (launch-bound) and an
    # influence step (fused dots+HVP) in ~4x that; data preparation on the CPU ~1 ms per step.
    gpu_step, gpu_infl = 0.004, 0.013
    gpu = 10 * ((20 + 37) * T * gpu_step + 2 * T * gpu_infl)
    rows["projection_mnist_nt10_gpu"] = {"seconds": round(gpu), "hours": round(gpu / 3600, 2),
                                         "assumptions": "train step 4 ms, influence step 13 ms incl. host work "
                                                        "(assumed, not measured: no GPU in this session)"}
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, nnabla CPU, load "
            f"{os.getloadavg()[0]:.1f}", "n_train": args.n_train, "batch": BATCH, "steps_timed": args.steps}
    Path(args.results).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\n{meta}")
    print(f"| {'row':32s} | {'seconds':>9s} | {'x epoch':>8s} | notes")
    print(f"|{'-' * 34}|{'-' * 11}|{'-' * 10}|------")
    for k, v in rows.items():
        if "epochs" not in v:
            continue
        notes = ", ".join(f"{a}={b:.2e}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items()
                          if a not in ("seconds", "epochs"))
        print(f"| {k:32s} | {v['seconds']:9.2f} | {v['epochs']:8.3f} | {notes}")
    for k in ("influence_ours_full_mnist_memory", "influence_functions_ekfac_full_mnist_memory",
              "projection_mnist_nt10_cpu", "projection_mnist_nt10_gpu"):
        if k not in rows:
            continue
        print(f"{k}: {rows[k]}")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
