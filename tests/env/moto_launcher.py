"""Runs moto's server (the AWS emulator) for capstan-testenv.

Usage: moto_launcher.py --port PORT [--host 127.0.0.1]

Before the server starts, every module in moto_ext/ next to this file is imported, in
name order. That folder is the extension point where small models of AWS behaviour
that moto lacks live (see moto_ext/README.md). A module that fails to import stops the
launcher with its traceback: a half-extended emulator would make tests lie.
"""

import argparse
import importlib.util
import pathlib
import sys

EXT_DIR = pathlib.Path(__file__).resolve().parent / "moto_ext"


def load_extensions() -> list[str]:
    loaded = []
    for path in sorted(EXT_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        name = f"capstan_moto_ext.{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load moto extension {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        loaded.append(path.stem)
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    loaded = load_extensions()
    print(f"moto_launcher: extensions loaded: {', '.join(loaded) or '(none)'}", flush=True)

    # moto's own CLI entry point (moto_server); it installs SIGINT/SIGTERM handlers and
    # serves with werkzeug's threaded server.
    from moto.server import main as moto_main

    moto_main(["--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    main()
