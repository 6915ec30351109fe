#!/usr/bin/env python3
"""Compiles the upstream protobuf definitions ops/proto/upstream.toml pins into app/proto/.

    .venv/bin/python scripts/protos.py     # `make venv` runs it when upstream.toml or this file changed

Each module's zip comes from the Go module proxy (the first URL of ``GOPROXY``, else
https://proxy.golang.org), is checked against its pinned sha256 and go.sum hash (``h1:``) and is
kept in .local/protos/, so a rerun needs no network. Only the listed .proto files are extracted,
into a temporary folder, and compiled by grpcio-tools' protoc, with the google/protobuf/*.proto it
ships on the include path, into app/proto/<package>/ (``*_pb2.py`` and ``*_pb2.pyi``; git ignores
them). protoc writes an import of another compiled file as a top-level module (``import
types_pb2``, ``from gogoproto import gogo_pb2``); those are rewritten to the app.proto package the
file was compiled into. A package is replaced whole, once every module compiled.

A failure is one line on stderr, naming the URL or file and why, and exit status 1.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
PINS: Final = ROOT / "ops" / "proto" / "upstream.toml"
CACHE: Final = ROOT / ".local" / "protos"
OUT: Final = ROOT / "app" / "proto"
DEFAULT_PROXY: Final = "https://proxy.golang.org"
DOWNLOAD_TIMEOUT: Final = 120.0
PROTOC_TIMEOUT: Final = 120.0
_IMPORT: Final = re.compile(r"^import (?P<module>\w+_pb2)(?P<alias> as \w+)?$", re.MULTILINE)
_FROM_IMPORT: Final = re.compile(
    r"^from (?P<parent>[\w.]+) import (?P<module>\w+_pb2)(?P<alias> as \w+)?$", re.MULTILINE
)


class ProtoError(Exception):
    """Why the modules could not be made, in one line."""


@dataclasses.dataclass(frozen=True)
class Module:
    """One Go module of upstream.toml and the .proto files compiled from it."""

    key: str
    module: str
    version: str
    sha256: str
    h1: str
    include: str
    files: tuple[str, ...]
    package: str

    def url(self, proxy: str) -> str:
        return f"{proxy.rstrip('/')}/{escape(self.module)}/@v/{escape(self.version)}.zip"

    @property
    def cache_name(self) -> str:
        return f"{self.module.replace('/', '+')}@{self.version}.zip"

    def member(self, name: str) -> str:
        """The zip member of one of the module's files: the Go proxy's zips hold ``module@version/...``."""
        return "/".join(part for part in (f"{self.module}@{self.version}", self.include, name) if part)


def escape(path: str) -> str:
    """A module path or version as the proxy's URLs spell it: capitals as ``!`` and the lower case letter."""
    return re.sub(r"[A-Z]", lambda capital: "!" + capital.group().lower(), path)


def proxy_from(environ: Mapping[str, str]) -> str:
    """The first http(s) URL of ``GOPROXY`` (entries split at ``,`` or ``|``), else proxy.golang.org."""
    for entry in re.split(r"[,|]", environ.get("GOPROXY", "")):
        if entry.strip().startswith(("https://", "http://")):
            return entry.strip()
    return DEFAULT_PROXY


def load_pins(path: Path) -> list[Module]:
    """The modules of an upstream.toml."""
    try:
        table = tomllib.loads(path.read_text())
        return [
            Module(
                key=key,
                module=entry["module"],
                version=entry["version"],
                sha256=entry["sha256"].lower(),
                h1=entry["h1"],
                include=entry.get("include", "").strip("/"),
                files=tuple(entry["files"]),
                package=entry["package"],
            )
            for key, entry in table["modules"].items()
        ]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ProtoError(f"{path}: {type(error).__name__}: {error}") from None


def go_sum_hash(data: bytes) -> str:
    """go.sum's ``h1:`` hash of a module zip (Go's dirhash.Hash1): a sha256 of its files' sha256 lines."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = sorted(name for name in archive.namelist() if not name.endswith("/"))
        lines = "".join(f"{hashlib.sha256(archive.read(name)).hexdigest()}  {name}\n" for name in names)
    return "h1:" + base64.b64encode(hashlib.sha256(lines.encode()).digest()).decode()


def verify(module: Module, data: bytes, source: str) -> None:
    """Raises ProtoError unless ``data`` is the zip upstream.toml pins for ``module``."""
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        h1 = go_sum_hash(data)
    except zipfile.BadZipFile:
        raise ProtoError(f"{source}: not a zip file (sha256 {sha256}, upstream.toml pins {module.sha256})") from None
    if (sha256, h1) != (module.sha256, module.h1):
        raise ProtoError(
            f"{source}: {module.module}@{module.version} is sha256 {sha256} {h1},"
            f" upstream.toml pins sha256 {module.sha256} {module.h1}"
        )


def download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as error:
        raise ProtoError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        raise ProtoError(f"cannot download {url}: {reason}") from None


def fetch(module: Module, cache: Path, proxy: str) -> bytes:
    """The module's zip, from the cache when it holds the pinned one, else from the proxy (then cached)."""
    cached = cache / module.cache_name
    if cached.is_file():
        data = cached.read_bytes()
        try:
            verify(module, data, str(cached))
            return data
        except ProtoError:
            pass  # another version, or cut short: downloaded again
    url = module.url(proxy)
    data = download(url)
    verify(module, data, url)
    cache.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(cached.name + f".{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(cached)
    return data


def extract(module: Module, data: bytes, root: Path, source: str) -> None:
    """Writes the module's listed files under ``root``, at the names protoc will know them by."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for name in module.files:
            try:
                content = archive.read(module.member(name))
            except KeyError:
                raise ProtoError(f"{source}: the zip has no {module.member(name)}") from None
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def generated(name: str, suffix: str) -> str:
    """The path protoc gives the module of a .proto name: ``gogoproto/gogo.proto`` is ``gogoproto/gogo_pb2.py``."""
    return name.removesuffix(".proto") + "_pb2" + suffix


def protoc(include: Sequence[Path], names: Sequence[str], out: Path) -> None:
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or not spec.submodule_search_locations:
        raise ProtoError(f"grpcio-tools is not installed in {sys.executable}: pip install -e '.[dev]'")
    bundled = Path(next(iter(spec.submodule_search_locations))) / "_proto"  # google/protobuf/*.proto
    command = [
        sys.executable, "-m", "grpc_tools.protoc",
        *(f"--proto_path={folder}" for folder in (*include, bundled)),
        f"--python_out={out}", f"--pyi_out={out}",
        *names,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROTOC_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ProtoError(f"protoc took over {PROTOC_TIMEOUT:.0f}s: {' '.join(command)}") from None
    if done.returncode != 0:
        detail = " | ".join(line for line in (done.stderr + done.stdout).splitlines() if line.strip())
        raise ProtoError(f"protoc failed ({done.returncode}): {detail}")


def rewrite_imports(text: str, homes: Mapping[str, str]) -> str:
    """``text`` with each import of a compiled module (``types_pb2``, ``gogoproto.gogo_pb2``) taken from its home."""

    def bare(match: re.Match[str]) -> str:
        home = homes.get(match["module"])
        return match[0] if home is None else f"from {home} import {match['module']}{match['alias'] or ''}"

    def dotted(match: re.Match[str]) -> str:
        home = homes.get(f"{match['parent']}.{match['module']}")
        return match[0] if home is None else f"from {home} import {match['module']}{match['alias'] or ''}"

    return _FROM_IMPORT.sub(dotted, _IMPORT.sub(bare, text))


def build(modules: Sequence[Module], cache: Path, out: Path, package: str, proxy: str) -> list[Path]:
    """Fetches, verifies, extracts and compiles every module; returns the packages written under ``out``."""
    by_name: dict[str, Module] = {}
    for module in modules:
        for name in module.files:
            if name in by_name:
                first = by_name[name].key
                raise ProtoError(f"{name} is listed by both {first} and {module.key}: protoc would see one file")
            by_name[name] = module
    # How protoc's output imports a file, and the package it is moved into.
    homes = {generated(name, "").replace("/", "."): f"{package}.{module.package}" for name, module in by_name.items()}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".protos-", dir=out) as scratch:
        stage, compiled = Path(scratch) / "stage", Path(scratch) / "compiled"
        compiled.mkdir()
        for module in modules:
            extract(module, fetch(module, cache, proxy), stage / module.key, module.url(proxy))
        protoc([stage / module.key for module in modules], sorted(by_name), compiled)
        ready = Path(scratch) / "ready"
        for module in modules:
            folder = ready / module.package
            folder.mkdir(parents=True, exist_ok=True)
            sources = ", ".join("/".join(filter(None, (module.include, name))) for name in module.files)
            (folder / "__init__.py").write_text(
                f'"""Compiled by scripts/protos.py from {module.module}@{module.version}: {sources}."""\n'
            )
            for name in module.files:
                for suffix in (".py", ".pyi"):
                    text = (compiled / generated(name, suffix)).read_text()
                    (folder / Path(generated(name, suffix)).name).write_text(rewrite_imports(text, homes))
        written = []
        for folder in sorted(ready.iterdir()):
            target = out / folder.name
            if target.exists():
                shutil.rmtree(target)
            folder.replace(target)
            written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pins", type=Path, default=PINS, help="the upstream.toml (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the zips are kept (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="the folder of the packages (default: %(default)s)")
    parser.add_argument("--package", default="app.proto", help="the dotted name of --out (default: %(default)s)")
    options = parser.parse_args(argv)
    try:
        written = build(load_pins(options.pins), options.cache, options.out, options.package, proxy_from(os.environ))
    except ProtoError as error:
        print(f"protos: {error}", file=sys.stderr)
        return 1
    packages = ", ".join(path.name for path in written)
    print(f"protos: compiled {packages} into {options.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
