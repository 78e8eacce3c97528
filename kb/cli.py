"""What the command-line tools share: the settings flags, logging, and turning errors into exit codes."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from kb.config import ASR_MODES, ENGINES, QUANTS, RERANK_MODES, SEARCH_MODES, Settings, load_settings
from kb.errors import SeekframeError

# flag -> Settings field; each flag mirrors its KB_* environment variable.
SETTING_FLAGS = {
    "--home": "home", "--engine": "engine", "--model": "model", "--openai-base-url": "openai_base_url",
    "--embed-model": "embed_model", "--device": "device", "--dtype": "dtype", "--quant": "quant",
    "--chroma-url": "chroma_url", "--batch-size": "batch_size", "--mode": "search_mode", "--rerank": "rerank",
    "--asr": "asr", "--asr-model": "asr_model", "--max-tokens": "max_answer_tokens", "--temperature": "temperature",
    "--top-p": "top_p",
}


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each overrides its KB_* environment variable)")
    for flag, name in SETTING_FLAGS.items():
        choices = {"engine": ENGINES, "quant": QUANTS, "search_mode": SEARCH_MODES, "rerank": RERANK_MODES,
                   "asr": ASR_MODES}.get(name)
        group.add_argument(flag, dest=f"setting_{name}", choices=choices, metavar=None if choices else name.upper(),
                           help=f"(KB_{name.upper()})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {k.removeprefix("setting_"): v for k, v in vars(args).items() if k.startswith("setting_")}
    return load_settings(overrides)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "chromadb", "sentence_transformers", "urllib3", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_cli(main: Callable[[], int]) -> None:
    """Run a command; a SeekframeError becomes its message, its fix and its exit code (no traceback)."""
    try:
        code = main()
    except SeekframeError as err:
        print(f"error: {err}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished files are stored; run the same command again to resume", file=sys.stderr)
        code = 130
    sys.exit(code)
