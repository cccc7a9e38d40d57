"""
Model size & cost calculator: parameters by component, memory for training and inference,
FLOPs per token, and how long and how much a training run takes, for this project's GPT.

The counts are computed by formula and checked against the real model built on the meta device
(they must agree exactly). --measure runs a few real training steps here and compares.
--from-checkpoint describes a model you trained: the shape is read from its checkpoint.
"""

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere: make the repo importable

import json
from dataclasses import asdict

from nanochat.common import (run_main, UserError, use_base_dir, GPU_PEAK_FLOPS, format_duration, add_device_arg, int_range,
                             float_range, nonneg_float)
from nanochat.gpt import CONFIG_LIMITS
from nanochat import checkpoint_manager as cm
from tools.lib import termui as ui
from tools.lib import model_calc as mc

DEFAULT_DEVICE_BATCH = 32  # rows per device when neither the flag, a checkpoint nor a preset says

EXAMPLES = [
    "python tools/model_calculator.py --preset d20",
    "python tools/model_calculator.py --preset nanochat-tiny                      # the CPU demo's model",
    "python tools/model_calculator.py --from-checkpoint d4                        # a model you trained",
    "python tools/model_calculator.py --from-checkpoint sft/d4:100                # one checkpoint of a stage",
    "python tools/model_calculator.py --depth 12 --hidden-dim 768 --vocab-size 32768",
    "python tools/model_calculator.py --preset d20 --batch-size 32 --seq-len 2048 --total-tokens 20e9 --gpu H100 --num-gpus 8",
    "python tools/model_calculator.py --depth 2 --vocab-size 512 --seq-len 64 --batch-size 4 --measure",
    "python tools/model_calculator.py --preset d26 --gpu A100 --json",
]


def parse_args(argv):
    p = ui.make_parser(__doc__, EXAMPLES)
    p.add_argument("--preset", choices=list(mc.PRESETS), help="a named shape: " + "; ".join(
        f"{k}: {v['note']}" for k, v in mc.PRESETS.items()))
    p.add_argument("--depth", type=int_range(1, CONFIG_LIMITS["n_layer"]), help="number of layers (model dim = depth x aspect ratio)")
    p.add_argument("--hidden-dim", type=int_range(1, CONFIG_LIMITS["n_embd"]), help="model dim (overrides depth x aspect ratio)")
    p.add_argument("--aspect-ratio", type=int_range(1, 4096), default=64, help="model dim = depth x aspect ratio (as base_train's flag)")
    p.add_argument("--head-dim", type=int_range(2, 4096), help="attention head dim (default 128, presets may differ)")
    p.add_argument("--n-kv-head", type=int_range(1, 2**20), help="KV heads (grouped-query attention; default = heads)")
    p.add_argument("--vocab-size", type=int_range(1, CONFIG_LIMITS["vocab_size"]), help="vocabulary size (default 32768)")
    p.add_argument("--seq-len", type=int_range(2, CONFIG_LIMITS["sequence_len"]), help="context length (default 2048)")
    p.add_argument("--window-pattern", type=str, help="per-layer windows like SSSL (default SSSL)")
    p.add_argument("--batch-size", type=int_range(1, 65536), default=None,
                   help="rows per device per step (device batch size; default: the checkpoint's or preset's, else 32)")
    p.add_argument("--total-batch-size", type=int_range(1, 2**40), help="tokens per optimizer step (default batch x seq x GPUs)")
    p.add_argument("--total-tokens", type=float_range(0, 1e30, low_open=True), help="training tokens (default: --param-data-ratio x scaling params)")
    p.add_argument("--param-data-ratio", type=float_range(0, 1e6, low_open=True), default=20.0, help="tokens per scaling parameter (Chinchilla 20)")
    p.add_argument("--gpu", type=str, help="GPU for time and cost: " + ", ".join(GPU_PEAK_FLOPS))
    p.add_argument("--num-gpus", type=int_range(1, 10**6), default=1, help="GPUs training together, for time and cost")
    p.add_argument("--mfu", type=float_range(0, 1, low_open=True), help="assumed model FLOPs utilisation, 0..1 (default 0.4 GPU, 0.3 CPU)")
    p.add_argument("--price-per-hour", type=nonneg_float, help="USD per GPU-hour (default: the table below)")
    p.add_argument("--gpu-memory", type=float_range(0, 1e6, low_open=True), help="GB per GPU for the batch-size suggestion (default: the GPU's)")
    p.add_argument("--measure", action="store_true", help="run a few real training steps here: predicted vs measured")
    p.add_argument("--measure-steps", type=int_range(1, 1000), default=3, help="how many real training steps --measure runs")
    add_device_arg(p)  # for --measure
    g = p.add_argument_group("a trained model", "take the shape, the device batch size and the tokens per step "
                             "from a checkpoint's meta instead of --preset/--depth; --model-tag, --step or --source "
                             "alone imply --from-checkpoint")
    g.add_argument("--from-checkpoint", nargs="?", const="", default=None, metavar="[STAGE/]TAG[:STEP]",
                   help="the checkpoint to describe, e.g. d4, sft/d4, d4:200 (without a name: the flags below, "
                        "default the latest of the largest base model)")
    cm.add_checkpoint_args(g, "base", short=False)
    p.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = p.parse_args(argv)
    if args.from_checkpoint is None and (args.model_tag is not None or args.step is not None or args.source != "base"):
        args.from_checkpoint = ""  # the address flags alone name the checkpoint
    shape = [flag for flag, value in (("--preset", args.preset), ("--depth", args.depth), ("--hidden-dim", args.hidden_dim),
             ("--head-dim", args.head_dim), ("--n-kv-head", args.n_kv_head), ("--vocab-size", args.vocab_size),
             ("--seq-len", args.seq_len), ("--window-pattern", args.window_pattern)) if value is not None]
    if args.from_checkpoint is not None and shape:
        raise UserError(f"the checkpoint fixes the model's shape: leave out {', '.join(shape)}, or describe a new "
                        "model without --from-checkpoint/--model-tag/--step/--source")
    if args.preset is None and args.depth is None and args.from_checkpoint is None:
        raise UserError("give --preset NAME, --depth N or --from-checkpoint (see --help)")
    return args


def compute(args):
    checkpoint, run_batch, run_device_batch, batch_from = None, None, None, None
    if args.from_checkpoint is not None:
        if args.from_checkpoint:  # one word [STAGE/]TAG[:STEP], read by the one resolver every tool uses
            if args.base_dir:
                use_base_dir(args.base_dir)
            source, cdir, tag, step = cm.resolve_address(args.from_checkpoint, args.source, step=args.step)
        else:
            source, cdir, tag, step = cm.checkpoint_from_args(args)
        config = cm.checkpoint_model_config(cdir, step)  # the meta's model_config, checked against the weights' shapes
        meta = cm.read_meta(cdir, step)
        user = meta.get("user_config") or {}
        run_batch = meta.get("total_batch_size") or user.get("total_batch_size")
        run_device_batch = meta.get("device_batch_size") or user.get("device_batch_size")
        checkpoint = {"source": source, "model_tag": tag, "step": step, "path": cdir}
        batch_from = f"the checkpoint's meta ({source}/{tag} step {step})"
    else:
        config = mc.build_config(args.preset, args.depth, args.hidden_dim, args.vocab_size, args.seq_len,
                                 args.head_dim, args.n_kv_head, args.window_pattern, args.aspect_ratio)
        if args.preset:  # a preset that names a run (the CPU demo's) brings that run's batch too
            run_batch = mc.PRESETS[args.preset].get("total_batch_size")
            run_device_batch = mc.PRESETS[args.preset].get("device_batch_size")
            batch_from = f"the preset {args.preset}"
    if args.batch_size is None:
        args.batch_size = run_device_batch or DEFAULT_DEVICE_BATCH
        args.batch_from = batch_from if run_device_batch else "the default"
    else:
        args.batch_from = "--batch-size"
    tokens_per_step = args.total_batch_size or run_batch or args.batch_size * config.sequence_len * args.num_gpus
    peak = None
    if not args.gpu:
        from nanochat.common import measure_cpu_matmul_flops
        peak = measure_cpu_matmul_flops()
    plan = mc.training_plan(config, args.total_tokens, args.param_data_ratio, tokens_per_step, args.gpu,
                            args.num_gpus, args.mfu, args.price_per_hour, peak)
    cuda = bool(args.gpu)
    gpu_key = mc.find_gpu(args.gpu) if args.gpu else None
    gpu_mem = (args.gpu_memory or (mc.GPU_MEMORY_GB.get(gpu_key) if gpu_key else None))
    return {
        "checkpoint": checkpoint,
        "config": config.to_dict(),
        "device_batch_size": args.batch_size,
        "device_batch_size_from": args.batch_from,
        "params": mc.param_counts(config),
        "total_params": mc.total_params(config),
        "scaling_params": mc.scaling_params(config),
        "flops_per_token": mc.flops_per_token(config),
        "check": mc.check_against_model(config),
        "memory": mc.memory_estimate(config, args.batch_size, cuda),
        "plan": asdict(plan),
        "gpu_memory_gb": gpu_mem,
        "suggested_batch_size": mc.suggest_batch_size(config, gpu_mem * 1e9, cuda) if gpu_mem else None,
        "_config": config,
    }


def print_report(r, args):
    cfg, n = r["config"], r["total_params"]
    print(ui.heading("Model"))
    ck = r["checkpoint"]
    print(ui.key_values(([("from", f"{ck['source']}/{ck['model_tag']} step {ck['step']} ({ck['path']})")] if ck else []) + [
        ("shape", f"{cfg['n_layer']} layers, dim {cfg['n_embd']}, {cfg['n_head']} heads of "
                  f"{cfg['n_embd'] // cfg['n_head']} ({cfg['n_kv_head']} KV heads), window {cfg['window_pattern']}"),
        ("vocab / context", f"{cfg['vocab_size']:,} tokens (padded to a multiple of 64) / {cfg['sequence_len']:,}"),
    ]))
    print()
    print(ui.heading("Parameters"))
    rows = [[k.replace("_", " "), v, f"{100 * v / n:.1f}%", ui.bar(v / n, 20)] for k, v in r["params"].items()]
    rows.append([ui.style("total", "bold"), n, "100%", ""])
    print(ui.table(rows, headers=["component", "parameters", "share", ""], align="<>><"))
    print(ui.key_values([("scaling params", f"{r['scaling_params']:,} ({ui.fmt_si(r['scaling_params'])}, all but embedding tables)")]))
    chk = r["check"]
    verdict = ui.good("equal") if chk["equal"] else ui.bad("DIFFERENT")
    print(f"  checked against the real model on the meta device: params {chk['params_model']:,}, "
          f"FLOPs/token {chk['flops_model']:,} -> {verdict}")
    print()
    print(ui.heading("Memory"))
    m = r["memory"]
    print(ui.key_values([("weights fp32", ui.fmt_bytes(m["weights_fp32"])), ("weights bf16", ui.fmt_bytes(m["weights_bf16"]))]))
    where = "bf16 activations (GPU)" if args.gpu else "fp32 activations (CPU)"
    print(f"  training at device batch {args.batch_size} (from {args.batch_from}) x {cfg['sequence_len']} tokens, {where}:")
    rows = [[k, ui.fmt_bytes(v)] for k, v in m["training"].items()] + [[ui.style("total", "bold"), ui.fmt_bytes(m["training_total"])]]
    print(ui.table(rows, align="<>", indent=4))
    print(ui.key_values([("KV cache per token", ui.fmt_bytes(m["kv_cache_per_token"])),
                         ("inference, full context", ui.fmt_bytes(m["inference_full_context"]) + " (bf16 weights + KV cache)")]))
    if r["suggested_batch_size"]:
        print(f"  largest device batch that fits {r['gpu_memory_gb']:g} GB (90%): {ui.good(r['suggested_batch_size'])}")
    elif r["gpu_memory_gb"]:
        print(f"  {ui.warn('even batch 1 does not fit')} in {r['gpu_memory_gb']:g} GB: shard the model or pick a bigger GPU")
    print()
    print(ui.heading("Compute and cost"))
    p = r["plan"]
    rows = [("FLOPs per token", f"{r['flops_per_token']:,} ({ui.fmt_si(r['flops_per_token'])}; 6 x matmul params + attention)"),
            ("training tokens", f"{ui.fmt_si(p['total_tokens'])}" + ("" if args.total_tokens else f" ({args.param_data_ratio:g} x scaling params)")),
            ("tokens per step", f"{p['tokens_per_step']:,}"),
            ("steps", f"{p['steps']:,}"),
            ("total FLOPs", f"{p['total_flops']:.3e}")]
    if p["seconds"] is not None:
        rows.append(("hardware", f"{p['where']}, peak {ui.fmt_si(p['peak_flops'], 'FLOP/s')} per device, "
                                 f"assumed MFU {100 * p['mfu']:.0f}%"))
        rows.append(("time", format_duration(p["seconds"])))
    if p["cost"] is not None:
        rows.append(("cost", f"${p['cost']:,.2f} at ${p['price_per_hour']:.2f}/GPU-hour (assumed list price)"))
    print(ui.key_values(rows))
    print()
    print(ui.heading("Insights"))
    for line in insights(r, args):
        print("  - " + line)


def insights(r, args):
    n, c, cfg = r["total_params"], r["params"], r["config"]
    emb = c["token_embedding"] + c["value_embeddings"]
    out = [f"{100 * emb / n:.0f}% of the parameters are embedding tables (token + value embeddings): lookups that "
           "cost memory but almost no FLOPs, which is why scaling laws count the other "
           f"{ui.fmt_si(r['scaling_params'])}."]
    m = r["memory"]
    out.append(f"training needs ~{m['training_total'] / max(1, m['weights_fp32']):.1f}x the fp32 weights: gradients "
               "and optimizer moments are as big as the weights, and activations grow with the batch.")
    logit_share = m["training"]["logits"] / m["training_total"]
    if logit_share > 0.2:
        out.append(f"the logits ({cfg['vocab_size']:,} per token) take {100 * logit_share:.0f}% of training memory; "
                   "a smaller device batch with gradient accumulation keeps the same total batch.")
    attn_share = 1 - 6 * (n - emb - c["scalars"]) / r["flops_per_token"]
    out.append(f"attention scores are {100 * attn_share:.0f}% of the FLOPs at context {cfg['sequence_len']:,}; "
               "the rest is 6 FLOPs per weight per token (2 forward, 4 backward).")
    out.append(f"a {cfg['sequence_len']:,}-token conversation holds {ui.fmt_bytes(m['kv_cache_per_token'] * cfg['sequence_len'])} "
               "of KV cache per sample at inference.")
    return out


def print_measure(res):
    print()
    print(ui.heading(f"Measured on this machine ({res['device']}, batch {res['batch_size']}, {res['steps']} steps)"))
    pt, mt = res["predicted_tokens_per_sec"], res["measured_tokens_per_sec"]
    rows = [["throughput (tokens/s)", ui.fmt_num(pt, 1) if pt else "-", ui.fmt_num(mt, 1),
             f"{mt / pt:.2f}" if pt else "-"],
            ["training memory", ui.fmt_bytes(res["predicted_memory"]), ui.fmt_bytes(res["measured_memory"]),
             f"{res['measured_memory'] / res['predicted_memory']:.2f}"]]
    print(ui.table(rows, headers=["", "predicted", "measured", "measured/predicted"], align="<>>>"))
    print(ui.key_values([("step time", f"{res['step_time'] * 1000:.0f} ms"),
                         ("peak", res["peak_desc"]),
                         ("predicted at", f"assumed MFU {100 * res['assumed_mfu']:.0f}%"),
                         ("measured MFU", f"{100 * res['measured_mfu']:.1f}%" if res["measured_mfu"] else "-"),
                         ("memory measured as", res["memory_note"])]))


def main(argv=None):
    args = parse_args(argv)
    r = compute(args)
    config = r.pop("_config")
    if args.measure:
        r["measure"] = mc.measure_training(config, args.batch_size, args.device_type, args.measure_steps)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print_report(r, args)
    if args.measure:
        print_measure(r["measure"])
    return 0


if __name__ == "__main__":
    run_main(main)
