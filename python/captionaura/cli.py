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
    """Federated, secure-aggregated LoRA personalisation of the packaged aura-tiny captioner for simulated
    AuraScenes users: metrics per user (base / federated / personal), sample captions, a video with and
    without context, report.json and report.png."""
    from captionaura.demo import DemoConfig, run_demo

    sizes = {name: getattr(args, name) for name in ("clients", "rounds", "local_steps", "personal_steps",
                                                    "train_per_user", "test_per_user", "seed", "model")}
    run_demo(DemoConfig(**{k: v for k, v in sizes.items() if v is not None}, out_dir=args.out,
                        secure_aggregation=not args.no_secure_aggregation, video=not args.no_video,
                        progressbar=not args.no_progress))
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


def cmd_train(args: argparse.Namespace) -> int:
    """Federated LoRA training in one process (a Simulation): clients from --data (one .npz per client),
    config from --config (TOML/JSON) and/or flags (flags win); writes checkpoints after every round,
    history.json and the final adapter to --output-dir; --resume continues an interrupted run."""
    from captionaura.federated.config import run_training

    cfg = _config_from_args(args)
    sim = run_training(cfg, num_clients=args.clients, resume=args.resume, progressbar=not args.no_progress)
    for r in sim.history:
        extra = "".join(f" {k}={v:.4g}" for k, v in r.metrics.items())
        print(f"round {r.round}: loss {r.train_loss:.4f}, {len(r.clients)} clients{extra}")
    print(f"wrote {cfg.output_dir}/adapter, {cfg.output_dir}/history.json")
    return 0


def _config_from_args(args: argparse.Namespace):
    from dataclasses import fields

    from captionaura.federated.config import FederatedConfig

    values = FederatedConfig.from_file(args.config).to_dict() if args.config else {}
    values.update({f.name: getattr(args, f.name) for f in fields(FederatedConfig) if getattr(args, f.name) is not None})
    return FederatedConfig.from_dict(values)


def cmd_flower_app(args: argparse.Namespace) -> int:
    """Write the Flower app folder (pyproject.toml) for `flwr run`: the run config is the federated config
    (--config and/or flags) plus the deployment's number of SuperNodes; the code is captionaura.flower."""
    from captionaura.flower import write_app

    cfg = _config_from_args(args)
    folder = write_app(args.out, cfg, num_supernodes=args.num_supernodes, reply_timeout=args.reply_timeout)
    print(f"wrote {folder / 'pyproject.toml'}; run it with: flwr run {folder} <superlink connection> --stream")
    return 0


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per FederatedConfig field (--lora-r, --secure-aggregation/--no-secure-aggregation, ...);
    unset flags keep the config file's value or the default."""
    from dataclasses import MISSING, fields

    from captionaura.federated.config import FederatedConfig

    for f in fields(FederatedConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default: {default})")
        else:
            parser.add_argument(flag, type=type(default), default=None, help=f"(default: {default!r})")


def keep_fp32(dtype: str) -> bool:
    """Whether a command inferring with `dtype` keeps the fp32 weights: bf16 gives them back where the CPU's bf16
    kernels do not read them (AVX512-BF16), so that the model holds half the memory."""
    from captionaura import _core

    return not (dtype == "bf16" and _core.lowp_isa("auto") == "avx512")


def load_captioner(path: str | None, dtype: str):
    """A checkpoint folder, loaded straight into `dtype`, else the built-in model converted to it."""
    import captionaura as ca

    if path:
        return ca.Lfm2VlModel.from_pretrained(path, dtype=dtype, keep_fp32=keep_fp32(dtype))
    if not hasattr(ca, "load_default"):
        raise ValueError("no --model given and this installation has no built-in model: pass --model DIR (an LFM2-VL "
                         "checkpoint folder)")
    return ca.load_default().to_inference_dtype(dtype, keep_fp32=keep_fp32(dtype))


def cmd_caption(args: argparse.Namespace) -> int:
    """Caption an image, optionally with the video that led up to it and in a user's style and language."""
    from captionaura.personal import StyleProfile
    from captionaura.vl import VideoContextConfig

    model = load_captioner(args.model, args.dtype)
    generation = None
    if args.max_new_tokens is not None:
        generation = model._caption_settings(None).replace(max_new_tokens=args.max_new_tokens)
    style = StyleProfile.from_csv(args.style_from, args.caption_column) if args.style_from else None
    video_config = VideoContextConfig(fps=args.fps, max_frames=args.max_frames,
                                      frame_token_budget=args.frame_token_budget)
    caption = model.caption(args.image, prompt=args.prompt, generation=generation, video=args.video,
                            context_mode=args.context_mode, style=style, language=args.language,
                            video_config=video_config, results_dir=args.results_dir,
                            progressbar=not args.no_progress)
    print(caption)
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
    model = load_captioner(args.model, args.dtype)
    service = serve.CaptionService(model, name=args.model or "default model")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: other machines can reach this page", file=sys.stderr)
    serve.run(service, host=args.host, port=args.port)
    return 0


DTYPE_HELP = ("weights to infer with: fp32 (default), bf16 (half the memory and about twice the speed on CPUs "
              "with AVX512-BF16) or int8 (a quarter of fp32's decoding traffic)")


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
    # sizes left out take DemoConfig's defaults
    demo.add_argument("--clients", type=int, help="simulated users, one client each")
    demo.add_argument("--rounds", type=int, help="federated rounds")
    demo.add_argument("--local-steps", type=int, help="client steps per round")
    demo.add_argument("--personal-steps", type=int, help="on-device steps of each personal adapter (0: none)")
    demo.add_argument("--train-per-user", type=int, help="private photos per user")
    demo.add_argument("--test-per-user", type=int, help="held-out photos per user")
    demo.add_argument("--no-secure-aggregation", action="store_true", help="aggregate plain updates")
    demo.add_argument("--no-video", action="store_true", help="skip the video-context section")
    demo.add_argument("--model", help="captioner checkpoint folder (default: the packaged aura-tiny)")
    demo.add_argument("--out", default="demo_output", help="output folder (report.json, report.png, kits)")
    demo.add_argument("--seed", type=int)
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
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

    train = sub.add_parser("train", help=cmd_train.__doc__.splitlines()[0], description=cmd_train.__doc__)
    train.add_argument("--config", help="TOML or JSON file with FederatedConfig keys")
    train.add_argument("--clients", type=int, help="use the first N clients of --data (default: all)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output-dir")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_config_flags(train)
    train.set_defaults(func=cmd_train)

    app = sub.add_parser("flower-app", help=cmd_flower_app.__doc__.splitlines()[0], description=cmd_flower_app.__doc__)
    app.add_argument("--out", required=True, help="the app folder to write")
    app.add_argument("--config", help="TOML or JSON file with FederatedConfig keys")
    app.add_argument("--num-supernodes", type=int, required=True, help="SuperNodes the server waits for")
    app.add_argument("--reply-timeout", type=float, default=600.0, help="seconds to wait for replies per exchange")
    _add_config_flags(app)
    app.set_defaults(func=cmd_flower_app)
    cap = sub.add_parser("caption", help=cmd_caption.__doc__, description=cmd_caption.__doc__)
    cap.add_argument("image", help="the image file to caption")
    cap.add_argument("--model", help="LFM2-VL checkpoint folder (default: the built-in model, when installed)")
    cap.add_argument("--prompt", help="the caption request (default: a short-caption request)")
    cap.add_argument("--video", help="a video file (mp4, webm, ...) of what led up to the image")
    cap.add_argument("--context-mode", choices=("frames", "captions"), default="frames",
                     help="frames: video frames as images in the prompt (default); captions: their captions as text")
    cap.add_argument("--fps", type=float, default=1.0, help="video frames sampled per second (default 1)")
    cap.add_argument("--max-frames", type=int, default=12, help="at most this many video frames (default 12)")
    cap.add_argument("--frame-token-budget", type=int, default=768,
                     help="frames mode: image tokens allowed for the video frames (default 768)")
    cap.add_argument("--style-from", help="CSV of the user's own posts (a caption/text column) to write like")
    cap.add_argument("--caption-column", help="the CSV column holding the captions (default: found by name)")
    cap.add_argument("--language", help="caption language: a code (fr, de, ...) or a name")
    cap.add_argument("--max-new-tokens", type=int, help="longest caption in tokens")
    cap.add_argument("--results-dir", help="write the frames, per-frame captions and captions.json here")
    cap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cap.add_argument("--dtype", choices=("fp32", "bf16", "int8"), default="fp32", help=DTYPE_HELP)
    cap.set_defaults(func=cmd_caption)

    srv = sub.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    srv.add_argument("--model", help="LFM2-VL checkpoint folder (default: the packaged default model)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--threads", type=int, help="threads of the C core (default: every core)")
    srv.add_argument("--dtype", choices=("fp32", "bf16", "int8"), default="fp32", help=DTYPE_HELP)
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
