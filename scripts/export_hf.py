"""
Export a checkpoint to a Hugging Face folder that `transformers` loads without nanochat.

Pipeline position: after any training stage (default: SFT). Reads one checkpoint and the tokenizer and
writes model.safetensors, config.json, the model code, tokenizer.json, tokenizer_config.json (with the
chat template) and a model card (README.md); scripts/hf/export.py does the work and says what each
file is. Loading the folder:

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("hf_export/sft-d20", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained("hf_export/sft-d20")

Needs the `hf` extra: pip install -e '.[hf]'

Examples:
    python -m scripts.export_hf                                   # last SFT checkpoint -> hf_export/sft-<tag>
    python -m scripts.export_hf -i base -g d4 -s 2000 --output ~/d4-base
    python -m scripts.export_hf --output out/d20 --push-to-hub you/nanochat-d20
"""

import os
import argparse

from nanochat.common import ArgumentParser, UserError, get_base_dir, run_main
from nanochat.checkpoint_manager import add_checkpoint_args, load_model_from_args


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.export_hf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p, "sft")
    p.add_argument("-o", "--output", type=str, default=None, help="folder to write (default hf_export/<stage>-<tag>)")
    p.add_argument("--push-to-hub", type=str, default=None, metavar="REPO",
                   help="also upload the folder to this Hugging Face repo, e.g. you/nanochat-d20")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        from scripts.hf.export import check_output_folder, export_model, push_to_hub
    except ImportError as e:
        raise UserError(f"the export needs the hf extra ({e.name} is missing): pip install -e '.[hf]'") from e
    if args.output:
        check_output_folder(os.path.expanduser(args.output))  # before a long load, not after
    # the export only copies weights: the CPU does it, whatever trained the model
    model, tokenizer, meta, (source, tag, step) = load_model_from_args(args, "cpu")
    out_dir = os.path.expanduser(args.output or os.path.join("hf_export", f"{source}-{tag}"))
    files = export_model(model, tokenizer, meta, (source, tag, step), out_dir, base_dir=get_base_dir())
    print(f"wrote {out_dir}: {', '.join(files)}")
    print(f"load it with AutoModelForCausalLM.from_pretrained({out_dir!r}, trust_remote_code=True)")
    if args.push_to_hub:
        url = push_to_hub(out_dir, args.push_to_hub, private=args.private)
        print(f"pushed to {args.push_to_hub}: {url}")


if __name__ == "__main__":
    run_main(main)
