"""The ``captionaura`` command line: one function per subcommand, registered in :func:`build_parser`.

    captionaura evaluate --refs annotations.json --results results.json [--out scores.json]
    captionaura serve [--model DIR] [--host 127.0.0.1] [--port 8000]
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from captionaura._io import write_json_atomic


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a COCO results file against a COCO caption annotation file (BLEU-1..4, CIDEr-D, ROUGE-L)."""
    import captionaura.metrics as cm

    refs = cm.load_references(args.refs)
    results = cm.load_results(args.results)
    if args.images == "results":
        # the toolkit's example: evaluate the images that have a result
        missing = [img for img in results if img not in refs]
        if missing:
            raise KeyError(f"result for image {missing[0]!r} has no reference caption in {args.refs}")
        refs = {img: caps for img, caps in refs.items() if img in results}  # annotation-file order, as the toolkit
    result = cm.evaluate(refs, results, metrics=args.metrics, tokenize=args.tokenize)

    width = max(len(k) for k in result.scores)
    for name, value in result.scores.items():
        print(f"{name:<{width}}  {value:.6f}")
    print(f"({len(result.per_image)} images)")
    if args.out:
        payload = {
            "scores": result.scores,
            "per_image": [{"image_id": img, **vals} for img, vals in result.per_image.items()],
        }
        write_json_atomic(args.out, payload)
        print(f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the main job on the built-in default and print its figures."""
    from captionaura.demo import DemoConfig, run_demo

    run_demo(DemoConfig(steps=args.steps, seed=args.seed, progressbar=not args.no_progress, report_path=args.report))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Fold a PEFT/captionaura LoRA adapter into its base model and write a plain Hugging Face checkpoint."""
    from captionaura.model import Lfm2Model

    model = Lfm2Model.from_pretrained(args.base)
    model.load_adapter(args.adapter)
    model.merge_lora()
    model.save_pretrained(args.out)
    print(f"merged {len(model.lora_modules())} adapted modules of {args.adapter} into {args.out}")
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    """Write (or extend) per-site startup kits: a CA, the server's TLS certificate and key, a key pair per
    client for node authentication, per-node TOML configs and a manifest."""
    from captionaura.federated import provision

    result = provision(args.clients, args.server_address, args.out)
    print(f"{len(result.client_dirs)} client kits in {result.out_dir} (added: {', '.join(result.added) or 'none'}); "
          f"server kit: {result.server_dir}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the live captioning web page (camera or uploads, streamed captions) on HOST:PORT."""
    try:
        from captionaura import serve
    except ImportError as err:
        raise ValueError(f"the web app needs the serve extra: pip install 'captionaura[serve]' ({err})") from None

    if args.threads is not None:
        import captionaura

        captionaura.set_num_threads(args.threads)
    model = serve.load_model(args.model)
    service = serve.CaptionService(model, name=args.model or "default model")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: other machines can reach this page", file=sys.stderr)
    serve.run(service, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captionaura", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help=cmd_evaluate.__doc__, description=cmd_evaluate.__doc__)
    ev.add_argument("--refs", required=True, help="COCO caption annotation JSON ({'annotations': [...]})")
    ev.add_argument("--results", required=True, help="results JSON: [{'image_id': .., 'caption': ..}, ...]")
    ev.add_argument("--out", help="write scores and per-image values to this JSON file (atomically)")
    ev.add_argument("--tokenize", choices=("ptb", "none"), default="ptb",
                    help="ptb: the toolkit's PTB tokenizer on raw captions (default); none: already tokenised")
    ev.add_argument("--metrics", nargs="+", choices=("Bleu", "CIDEr", "ROUGE_L"), default=["Bleu", "CIDEr", "ROUGE_L"])
    ev.add_argument("--images", choices=("results", "all"), default="results",
                    help="results: score the images that have a result (default); all: every annotated image "
                    "must have exactly one result")
    ev.set_defaults(func=cmd_evaluate)

    demo = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    demo.add_argument("--steps", type=int, default=60)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--report", help="also write the figures to this JSON file")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.set_defaults(func=cmd_demo)

    merge = sub.add_parser("merge", help=cmd_merge.__doc__, description=cmd_merge.__doc__)
    merge.add_argument("--base", required=True, help="base model folder (config.json + safetensors)")
    merge.add_argument("--adapter", required=True, help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    merge.add_argument("--out", required=True, help="where to write the merged checkpoint")
    merge.set_defaults(func=cmd_merge)

    prov = sub.add_parser("provision", help=cmd_provision.__doc__.splitlines()[0], description=cmd_provision.__doc__)
    prov.add_argument("--clients", type=int, required=True, help="number of clients (kits client-0001 ...)")
    prov.add_argument("--server-address", required=True, help="HOST:PORT the clients will connect to")
    prov.add_argument("--out", required=True, help="folder of the kits; running again adds missing clients only")
    prov.set_defaults(func=cmd_provision)

    srv = sub.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    srv.add_argument("--model", help="LFM2-VL checkpoint folder (default: the packaged default model)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--threads", type=int, help="threads of the C core (default: every core)")
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``captionaura`` script and ``python -m captionaura``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (KeyError, ValueError, TypeError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"captionaura {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
