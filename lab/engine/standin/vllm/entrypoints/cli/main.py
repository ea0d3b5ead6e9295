"""The ``vllm`` console script of the LAB STAND-IN (test fixture, not vLLM).

Only ``vllm serve [MODEL] [options]`` and ``vllm --version`` exist; any other subcommand or an
unknown flag is an argparse error (exit 2), as with the real CLI.
"""

from __future__ import annotations

import sys

from vllm import __version__
from vllm.args import FlexibleArgumentParser
from vllm.entrypoints.openai.api_server import make_arg_parser, run_server
from vllm.logger import init_logger

logger = init_logger("vllm.entrypoints.cli.main")


def main(argv: list[str] | None = None) -> None:
    parser = FlexibleArgumentParser(
        prog="vllm", description="vLLM CLI (LAB STAND-IN, a test fixture: not vLLM)"
    )
    parser.add_argument("-v", "--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="subparser", required=True, metavar="{serve}")
    serve = sub.add_parser(
        "serve",
        help="Start the OpenAI-compatible API server (lab stand-in).",
        usage="vllm serve [model_tag] [options]",
    )
    serve.add_argument("model_tag", nargs="?", default=None, help="The model directory.")
    make_arg_parser(serve)
    # Only `vllm serve` has it (not the api_server module), as in vLLM.
    serve.add_argument(
        "--headless", action="store_true", help="Run this node's ranks only, no API server."
    )
    ns = parser.parse_args(argv)
    if ns.model_tag:
        if ns.model and ns.model != ns.model_tag:
            logger.warning(
                "The model given as a positional argument (%s) overrides --model (%s).",
                ns.model_tag,
                ns.model,
            )
        ns.model = ns.model_tag
    elif ns.model:
        logger.warning(
            "With `vllm serve`, you should provide the model as a positional argument or in a "
            "config file instead of via the `--model` option."
        )
    else:
        serve.error("a model is required: vllm serve MODEL_DIR [options]")
    sys.exit(run_server(ns, serve))


if __name__ == "__main__":
    main()
