"""The llama.cpp toolchain of `ptft-hf-export --to gguf`: its runtime and its converter, from one sdist.

Both come from llama-cpp-python's PyPI sdist at one pinned version, which vendors llama.cpp: the runtime
is that sdist built into a wheel (a C++ build of minutes on 2 cores, so the wheel is cached and built
once per machine), and the converter is llama.cpp's own `convert_hf_to_gguf.py` with its `conversion/`
package and `gguf-py/` (the `gguf` package's source at the same commit: PyPI's `gguf` release lags the
converter, which needs its newer architecture constants). Runtime and converter so agree on the GGUF
format, the tokenizer names and the architectures. `ptft-hf-export --install` does it all:

1. `pip download` the sdist into the cache (`PTFT_HF_LLAMA_CPP_CACHE`, default
   `~/.cache/ptft_hf/llama_cpp`), unless it is there;
2. `pip wheel` it into the cache with `BUILD_CMAKE_ARGS` (the library only: no tools, tests, server or
   multimodal library), unless a wheel built with those arguments is there;
3. `pip install` the wheel into this environment;
4. copy the converter out of the sdist into this environment (`<sys.prefix>/share/ptft_hf/`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from ptft_hf.errors import Problem

log = logging.getLogger(__name__)

VERSION = "0.3.36"  # llama-cpp-python: runtime and converter of one llama.cpp commit
EXTRA = "export"  # the package's extra with the Python side of the export (gguf, sentencepiece)
INSTALL_COMMAND = "ptft-hf-export --install"
# The library the Python bindings load, nothing else (the tools, tests, server and multimodal library
# would double the build). GGML_NATIVE stays on: the wheel is built for, and cached on, this machine.
BUILD_CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
                    "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF")
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")


def cache_folder() -> Path:
    """Where the sdist and the built wheel are kept between environments (one machine's user)."""
    root = os.environ.get("PTFT_HF_LLAMA_CPP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ptft_hf", "llama_cpp")
    return Path(root)


def converter_folder(version: str = VERSION) -> Path:
    """The converter copied into this environment, beside the runtime of the same version."""
    return Path(sys.prefix) / "share" / "ptft_hf" / f"llama.cpp-{version}"


def runtime_version() -> str | None:
    """The installed llama-cpp-python's version, found without loading its library; None if absent."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Toolchain:
    version: str
    converter: Path  # holds convert_hf_to_gguf.py, conversion/, gguf-py/


def toolchain_problems() -> list[Problem]:
    """What is missing for an export: the extra's packages, the runtime, the converter (one line each)."""
    problems = []
    missing = [name for name in ("gguf", "sentencepiece") if importlib.util.find_spec(name) is None]
    if missing:
        problems.append(Problem("--to gguf", f"{' and '.join(missing)} not installed",
                                f"pip install 'ptft_hf[{EXTRA}]' (or pip install -e '.[{EXTRA}]' in a checkout)"))
    version = runtime_version()
    if version is None:
        problems.append(Problem("--to gguf", "the llama.cpp runtime (llama-cpp-python) is not installed",
                                f"install the '{EXTRA}' extra, then build it once: {INSTALL_COMMAND} "
                                "(minutes of C++ the first time, then cached)"))
    elif not (converter_folder(version) / "convert_hf_to_gguf.py").is_file():
        problems.append(Problem("--to gguf", f"llama.cpp's converter for llama-cpp-python {version} is not in this "
                                f"environment ({converter_folder(version)})", f"run {INSTALL_COMMAND}"))
    return problems


def toolchain() -> Toolchain:
    """The installed runtime's version and its converter (call after `toolchain_problems` found none)."""
    version = runtime_version() or VERSION
    return Toolchain(version, converter_folder(version))


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def _build_key() -> str:
    return hashlib.sha256(f"{VERSION} {BUILD_CMAKE_ARGS}".encode()).hexdigest()[:10]


def install(jobs: int | None = None) -> dict[str, float | str]:
    """Download, build (once per machine), install the runtime and copy its converter here; returns
    what it did and how long each step took (seconds)."""
    folder = cache_folder() / f"{VERSION}-{_build_key()}"
    folder.mkdir(parents=True, exist_ok=True)
    record: dict[str, float | str] = {"cache": str(folder)}
    sdist = folder / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.is_file():
        start = time.perf_counter()
        _pip("download", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={VERSION}", "-d", str(folder))
        record["download_s"] = round(time.perf_counter() - start, 1)
    wheels = sorted(folder.glob(f"llama_cpp_python-{VERSION}-*.whl"))
    if not wheels:
        start = time.perf_counter()
        env = dict(os.environ, CMAKE_ARGS=BUILD_CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(jobs or os.cpu_count() or 2))
        log.info("building llama-cpp-python %s from its sdist (once per machine; minutes on 2 cores)", VERSION)
        _pip("wheel", "--no-deps", "--no-cache-dir", str(sdist), "-w", str(folder), env=env)
        record["build_s"] = round(time.perf_counter() - start, 1)
        wheels = sorted(folder.glob(f"llama_cpp_python-{VERSION}-*.whl"))
    record["wheel"] = str(wheels[-1])
    start = time.perf_counter()
    _pip("install", str(wheels[-1]))
    record["install_s"] = round(time.perf_counter() - start, 1)
    _copy_converter(sdist, converter_folder(VERSION))
    record["converter"] = str(converter_folder(VERSION))
    return record


def _copy_converter(sdist: Path, target: Path) -> None:
    """llama.cpp's converter files out of the sdist (vendor/llama.cpp/...) into `target`."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)
                   and m.name[len(prefix):].split("/")[0] in CONVERTER_FILES and (m.isfile() or m.isdir())]
        for member in members:
            member.name = member.name[len(prefix):]
        archive.extractall(staging, members=members, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
