"""scripts/protos.py: modules fetched from a Go module proxy on a local socket, checked against their
pins, cached, compiled with grpcio-tools and imported; and the failures, each naming its URL."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import protos

ROOT = Path(__file__).resolve().parent.parent

# Two modules shaped as the real ones are: the first's files import each other and the second's
# (as remote.proto imports types.proto and gogoproto/gogo.proto), and google/protobuf's.
EXAMPLE_FILES = {
    "proto/a.proto": """syntax = "proto3";
package example;
import "b.proto";
import "dep/d.proto";
import "google/protobuf/timestamp.proto";
message A { B b = 1; dep.D d = 2; google.protobuf.Timestamp at = 3; }
""",
    "proto/b.proto": 'syntax = "proto3";\npackage example;\nmessage B { string name = 1; }\n',
    "proto/unused.proto": "this file is not listed, so never extracted nor compiled",
}
DEP_FILES = {"dep/d.proto": 'syntax = "proto3";\npackage dep;\nmessage D { int64 n = 1; }\n'}


def module_zip(path: str, version: str, files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            # A fixed date, as the module proxy's zips have: the same files make the same bytes (and hash)
            # however far apart two calls run.
            archive.writestr(zipfile.ZipInfo(f"{path}@{version}/{name}", date_time=(1980, 1, 1, 0, 0, 0)), text)
    return buffer.getvalue()


class Proxy:
    """A Go module proxy serving fixed zips by URL path, counting the requests it answers."""

    def __init__(self, zips: dict[str, bytes]) -> None:
        self.zips, self.requests = zips, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.requests += 1
                body = proxy.zips.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    served = Proxy({})
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()
        thread.join(timeout=10)


def pins(proxy: Proxy, tmp_path: Path, *, spoil: bool = False) -> list[protos.Module]:
    """Pins of the two example modules, served by ``proxy``; ``spoil`` pins another sha256 for the first."""
    example = module_zip("example.com/Upper/example", "v1.2.0", EXAMPLE_FILES)
    dep = module_zip("example.com/dep", "v0.1.0", DEP_FILES)
    proxy.zips["/example.com/!upper/example/@v/v1.2.0.zip"] = example
    proxy.zips["/example.com/dep/@v/v0.1.0.zip"] = dep
    sha256 = hashlib.sha256(b"another zip" if spoil else example).hexdigest()
    text = f"""
[modules.example]
module = "example.com/Upper/example"
version = "v1.2.0"
sha256 = "{sha256}"
h1 = "{protos.go_sum_hash(example)}"
include = "proto"
files = ["a.proto", "b.proto"]
package = "example"

[modules.dep]
module = "example.com/dep"
version = "v0.1.0"
sha256 = "{hashlib.sha256(dep).hexdigest()}"
h1 = "{protos.go_sum_hash(dep)}"
files = ["dep/d.proto"]
package = "dep"
"""
    (tmp_path / "upstream.toml").write_text(text)
    return protos.load_pins(tmp_path / "upstream.toml")


def test_modules_are_fetched_verified_compiled_into_packages_that_import_each_other(
    proxy: Proxy, tmp_path: Path
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "gen"
    written = protos.build(pins(proxy, tmp_path), cache, out, "gen", proxy.url)
    assert [path.name for path in written] == ["dep", "example"]
    assert sorted(path.name for path in (out / "example").iterdir()) == [
        "__init__.py", "a_pb2.py", "a_pb2.pyi", "b_pb2.py", "b_pb2.pyi",
    ]
    assert sorted(path.name for path in out.iterdir()) == ["dep", "example"]  # no scratch folder left
    generated = (out / "example" / "a_pb2.py").read_text()
    assert "from gen.example import b_pb2 as b__pb2" in generated
    assert "from gen.dep import d_pb2 as dep_dot_d__pb2" in generated
    assert "from google.protobuf import timestamp_pb2" in generated
    assert "from gen.dep import d_pb2 as _d_pb2" in (out / "example" / "a_pb2.pyi").read_text()
    program = (
        "from gen.example.a_pb2 import A\n"
        "a = A.FromString(A(b={'name': 'x'}, d={'n': 7}, at={'seconds': 1}).SerializeToString())\n"
        "print(a.b.name, a.d.n, a.at.seconds, A.DESCRIPTOR.file.name)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "x 7 1 a.proto\n", "")
    assert proxy.requests == 2 and len(list(cache.iterdir())) == 2

    # A rerun takes the cached zips: no request, and the packages are made again, whole.
    (out / "example" / "stale_pb2.py").write_text("")
    protos.build(pins(proxy, tmp_path), cache, out, "gen", proxy.url)
    assert proxy.requests == 2 and not (out / "example" / "stale_pb2.py").exists()

    # A cached zip that is not the pinned one (cut short) is downloaded again.
    cached = cache / "example.com+Upper+example@v1.2.0.zip"
    cached.write_bytes(cached.read_bytes()[:100])
    protos.build(pins(proxy, tmp_path), cache, out, "gen", proxy.url)
    assert proxy.requests == 3 and zipfile.is_zipfile(cached)


def test_a_zip_that_is_not_the_pinned_one_is_refused_naming_its_url_and_both_hashes(
    proxy: Proxy, tmp_path: Path
) -> None:
    modules = pins(proxy, tmp_path, spoil=True)
    with pytest.raises(protos.ProtoError) as refused:
        protos.build(modules, tmp_path / "cache", tmp_path / "gen", "gen", proxy.url)
    message = str(refused.value)
    assert message.startswith(f"{proxy.url}/example.com/!upper/example/@v/v1.2.0.zip: ")
    assert modules[0].sha256 in message and hashlib.sha256(b"another zip").hexdigest() in message
    served = proxy.zips["/example.com/!upper/example/@v/v1.2.0.zip"]
    assert hashlib.sha256(served).hexdigest() in message
    assert not (tmp_path / "cache").exists()
    assert list((tmp_path / "gen").iterdir()) == []  # nothing written, not even a scratch folder


def test_a_download_that_fails_says_which_url_and_why(proxy: Proxy, tmp_path: Path) -> None:
    modules = pins(proxy, tmp_path)
    proxy.zips.clear()
    with pytest.raises(protos.ProtoError, match=re.escape(f"cannot download {modules[0].url(proxy.url)}: HTTP 404")):
        protos.build(modules, tmp_path / "cache", tmp_path / "gen", "gen", proxy.url)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"
    refused = re.escape(f"cannot download {nobody}/example.com/!upper/") + ".*refused"
    with pytest.raises(protos.ProtoError, match=refused):
        protos.build(modules, tmp_path / "cache", tmp_path / "gen", "gen", nobody)


def test_the_script_reports_a_failure_in_one_line_and_exit_status_1(tmp_path: Path) -> None:
    (tmp_path / "upstream.toml").write_text("[modules.x]\nmodule = 'example.com/x'\n")
    command = [sys.executable, str(ROOT / "scripts" / "protos.py"), "--pins", str(tmp_path / "upstream.toml"),
               "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "gen")]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 1 and ran.stdout == ""
    assert ran.stderr.startswith(f"protos: {tmp_path / 'upstream.toml'}: KeyError") and ran.stderr.count("\n") == 1


def test_module_paths_are_escaped_and_goproxy_is_followed() -> None:
    assert protos.escape("github.com/BurntSushi/toml") == "github.com/!burnt!sushi/toml"
    assert protos.proxy_from({}) == protos.proxy_from({"GOPROXY": "direct"}) == "https://proxy.golang.org"
    assert protos.proxy_from({"GOPROXY": "off|https://mirror.example/go,direct"}) == "https://mirror.example/go"


def test_the_pins_compile_into_the_modules_the_makefile_lists() -> None:
    modules = protos.load_pins(protos.PINS)
    compiled = {
        f"app/proto/{module.package}/{Path(protos.generated(name, '.py')).name}"
        for module in modules
        for name in module.files
    }
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^PROTOS := ((?:.*\\\n)*.*)$", makefile, re.MULTILINE)
    assert listed is not None and set(listed[1].replace("\\\n", " ").split()) == compiled
    assert all(re.fullmatch(r"[0-9a-f]{64}", module.sha256) and module.h1.startswith("h1:") for module in modules)
