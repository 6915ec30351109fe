"""What README.md and docs/*.md name is what the project has.

Every ``make`` target, project path, command-line flag, setting, local URL and metric the pages
mention is checked against the Makefile, the tree, the programs' sources, :mod:`app.config`, the
listeners' route tables (and the views Quart serves beside them) and the gateway's metrics
registry; every relative link reaches its file and heading; the README's route table names every
route, and docs/layout.md every module; and every figure of docs/benchmarks.md sits in a table or
paragraph that names the command that printed it and the date of the run.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from app.config import Settings, load_settings
from app.http.listener import create_listener_app
from app.http.routes import Matcher, Route
from app.observability.metrics import Metrics
from app.runtime import LISTENERS, listener_routes
from app.status import page as status_page
from tests.conftest import ROOT
from tests.ops.promql import exported_series_names

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BENCHMARKS = ROOT / "docs" / "benchmarks.md"

# Upper-case names the pages show that are not the gateway's settings: the local infrastructure
# scripts' and the tests' own variables, other programs' (OpenSSL, OpenTelemetry SDKs), a socket
# option and a Spring Boot statistic. A name ending in ``_`` stands for every name it begins.
NOT_SETTINGS = frozenset(
    {
        "INFRA_DIR", "KAFKA_PORT_BASE", "PG_PORT", "PROMETHEUS_PORT", "KAFKA_SECURE", "KAFKA_HOME",
        "KILL_SEED", "SPOOL_TEST_SEED", "SSL_CERT_FILE", "SO_REUSEPORT", "TOTAL_TIME", "OTEL_",
        "TEST_WORKERS",
    }
)
# Lower-case names that begin like a metric and are not: the producer's librdkafka configuration
# (a function), a row key of `make bench --only`, and the rate field of an API key's format.
NOT_METRICS = frozenset({"producer_config", "forward_ack", "events_per_second"})


@dataclasses.dataclass(frozen=True)
class Page:
    path: Path
    text: str

    def fenced(self) -> list[str]:
        return [found.group(3) for found in FENCE.finditer(self.text)]

    def prose(self) -> str:
        """The text with fenced blocks blanked (their lines kept, so blocks stay apart)."""
        return FENCE.sub(lambda found: "\n" * found.group(0).count("\n"), self.text)

    def spans(self) -> list[str]:
        """Inline code spans of the prose (a table's ``\\|`` read as ``|``)."""
        return [found.group(2).replace("\\|", "|") for found in SPAN.finditer(self.prose())]

    def code(self) -> list[str]:
        return self.spans() + self.fenced()


FENCE = re.compile(r"^(```|~~~)([\w-]*)\n(.*?)^\1[ \t]*$", re.M | re.S)
SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")
SPAN_TEXT = re.compile(r"`([^`]+)`")


def page(path: Path) -> Page:
    return Page(path, path.read_text())


def pages() -> list[Any]:
    return [pytest.param(path, id=str(path.relative_to(ROOT))) for path in PAGES]


def test_the_pages_are_there() -> None:
    """The README links every page of docs/, and stays a newcomer's page."""
    readme = page(ROOT / "README.md")
    linked = {target.split("#")[0] for target in LINK.findall(readme.text)}
    for path in PAGES[1:]:
        assert str(path.relative_to(ROOT)) in linked, f"README.md does not link {path.relative_to(ROOT)}"
    assert len(readme.text.splitlines()) <= 400, "README.md is for a newcomer: a few hundred lines at most"


def test_the_readme_route_table_names_every_route_of_each_shipper_listener() -> None:
    """The README's "API at a glance" row of each port names every path of that listener's table."""
    rows: dict[int, str] = {}
    for line in page(ROOT / "README.md").prose().splitlines():
        found = re.match(r"^\| (\d{4}) \|", line)
        if found:
            rows[int(found.group(1))] = line
    defaults = load_settings({})
    for listener in ("application", "infrastructure", "transaction"):
        port = getattr(defaults, f"{listener}_port")
        assert port in rows, f"the README's route table has no row for {port}"
        shown = {span.split()[-1] for span in SPAN_TEXT.findall(rows[port])}
        unshown = sorted({route.path for route in listener_routes(listener)} - shown)
        assert not unshown, f"the README's row for {port} ({listener}) does not name {unshown}"


# -- make targets --------------------------------------------------------------------------------

MAKE = re.compile(r"(?<![\w./-])make\s+([a-z][\w-]*)")


@cache
def make_targets() -> frozenset[str]:
    targets: set[str] = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9][\w. -]*?)\s*:(?!=)", line)
        if found:
            targets.update(found.group(1).split())
    return frozenset(targets)


@pytest.mark.parametrize("path", pages())
def test_every_make_target_is_in_the_makefile(path: Path) -> None:
    named = {target for snippet in page(path).code() for target in MAKE.findall(snippet)}
    if path.name == "README.md":
        assert {"run", "test"} <= named, "the README's quick start is make run and make test"
    assert not named - make_targets(), f"{path.name}: not targets of the Makefile: {sorted(named - make_targets())}"


# -- paths ---------------------------------------------------------------------------------------

PROJECT_PATH = re.compile(r"(?<![\w./~$<-])((?:app|scripts|ops|tests|docs|\.ci)/[\w.*/-]*)")


def missing_paths(found: Page) -> list[str]:
    missing = []
    for snippet in found.code() + LINK.findall(found.prose()):
        for mention in PROJECT_PATH.findall(snippet):
            mention = mention.rstrip(".,:;")
            exists = any(ROOT.glob(mention)) if "*" in mention else (ROOT / mention).exists()
            if not exists:
                missing.append(mention)
    return missing


@pytest.mark.parametrize("path", pages())
def test_every_project_path_exists(path: Path) -> None:
    missing = missing_paths(page(path))
    assert not missing, f"{path.name} names paths that do not exist: {missing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(found: Page) -> set[str]:
    return {slug(line.lstrip("#")) for line in found.prose().splitlines() if re.match(r"^#{1,6} ", line)}


@pytest.mark.parametrize("path", pages())
def test_every_relative_link_reaches_its_page_and_heading(path: Path) -> None:
    found = page(path)
    broken = []
    for target in LINK.findall(found.prose()):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(page(linked)):
            broken.append(target)
    assert not broken, f"{path.name}: links to no such file or heading: {broken}"


LAYOUT_HEAD = re.compile(r"^( {0,2})(\S+)")
LAYOUT_FILE = re.compile(r"(?<![\w/.*-])([\w*-]+\.(?:py|sh|md|json|yaml|yml|toml|xml))(?![\w])")


def layout_named() -> set[Path]:
    """Every file and folder docs/layout.md's tree names: a line's first name, and the files its text names."""
    top = current = ROOT
    named: set[Path] = set()
    for line in page(ROOT / "docs" / "layout.md").fenced()[0].splitlines():
        head = LAYOUT_HEAD.match(line)
        description = line
        if head:
            indent, name = head.groups()
            base = top if indent else ROOT
            named.add(base / name.rstrip("/"))
            if name.endswith("/"):
                current = base / name.rstrip("/")
                top = top if indent else current
            else:
                current = base
            description = line[head.end():]
        for file in LAYOUT_FILE.findall(description):
            named.update(current.glob(file) if "*" in file else [current / file])
    return named


def test_the_layout_names_every_module_and_only_files_there_are() -> None:
    named = layout_named()
    missing = sorted(str(path.relative_to(ROOT)) for path in named if not path.exists())
    assert not missing, f"docs/layout.md names what is not there: {missing}"
    modules = {
        path.parent if path.name == "__init__.py" else path
        for path in (ROOT / "app").rglob("*.py")
        if "proto" not in path.relative_to(ROOT / "app").parts[:1]
    }
    modules.discard(ROOT / "app")
    unnamed = sorted(str(path.relative_to(ROOT)) for path in modules - named)
    assert not unnamed, f"docs/layout.md does not name: {unnamed}"


# -- command-line flags -------------------------------------------------------------------------

PROGRAM = re.compile(r"(scripts/[\w-]+\.py|python -m app\b)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def program_source(program: str) -> str:
    """The source that declares a program's flags: the script and the modules of scripts/ it imports."""
    if program.startswith("python -m app"):
        files = [ROOT / "app" / "__main__.py", ROOT / "app" / "outbox" / "cli.py"]
    else:
        script = ROOT / program
        files = [script]
        for module in re.findall(r"^(?:from|import) (\w+)", script.read_text(), re.M):
            files += [ROOT / "scripts" / f"{module}.py", *(ROOT / "scripts" / module).glob("*.py")]
    return "".join(path.read_text() for path in files if path.exists())


def flags_used(found: Page) -> Iterator[tuple[str, str]]:
    """Each (program, flag) a command line of the page gives, and the flags a ``| flag |`` table lists
    for the last program named before it."""
    last = None
    flag_table = False
    for line in logical_lines(found.text):
        flag_table = line.startswith("|") and (flag_table or bool(re.match(r"^\| flag \|", line)))
        if flag_table and last:
            for flag in FLAG.findall(line.split("|")[1]):
                yield last, flag
            continue
        programs = list(PROGRAM.finditer(line))
        for i, program in enumerate(programs):
            last = program.group(1)
            end = programs[i + 1].start() if i + 1 < len(programs) else len(line)
            command = re.split(r"[`;|&]|\s#\s", line[program.end():end])[0]
            for flag in FLAG.findall(command):
                yield last, flag


@pytest.mark.parametrize("path", pages())
def test_every_flag_is_one_its_program_takes(path: Path) -> None:
    unknown = sorted(
        {f"{program} {flag}" for program, flag in flags_used(page(path))
         if f'"{flag}"' not in program_source(program) and f"'{flag}'" not in program_source(program)}
    )
    assert not unknown, f"{path.name}: flags their programs do not declare: {unknown}"


# -- settings ------------------------------------------------------------------------------------


def field_names(cls: Any) -> list[str]:
    if dataclasses.is_dataclass(cls):
        return [field.name for field in dataclasses.fields(cls)]
    return [field.name for field in msgspec.structs.fields(cls)]


@cache
def settings() -> tuple[frozenset[str], frozenset[str]]:
    """Every setting's variable, and the profile settings' suffixes (``_RATE_LIMIT``)."""
    profiles = load_settings({}).profiles()
    profile_class = type(next(iter(profiles.values())))
    suffixes = frozenset(f"_{name.upper()}" for name in field_names(profile_class))
    names = {name.upper() for name in field_names(Settings) if name not in profiles}
    names |= {f"{profile.upper()}{suffix}" for profile in profiles for suffix in suffixes}
    return frozenset(names), suffixes


# A code span that is a variable alone: NAME, NAME=value, $NAME, <PROFILE>_NAME, _NAME, NAME_*, *_NAME.
VARIABLE_SPAN = re.compile(r"^\$?\{?((?:<PROFILE>|\*)?_?[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*_?\*?)\}?(?:=\S*)?$")
# In a command line or a block: an assignment NAME=... or a reference $NAME.
VARIABLE_USE = re.compile(r"(?<![\w$-])([A-Z][A-Z0-9]*_[A-Z0-9_]*)=|\$\{?([A-Z][A-Z0-9]*_[A-Z0-9_]*)")


def variables(found: Page) -> set[str]:
    named: set[str] = set()
    for snippet in found.code():
        whole = VARIABLE_SPAN.match(snippet.strip())
        if whole and "_" in whole.group(1):
            named.add(whole.group(1))
        for assigned, referenced in VARIABLE_USE.findall(snippet):
            named.add(assigned or referenced)
    return named


def is_setting(variable: str) -> bool:
    names, suffixes = settings()
    allowed = names | NOT_SETTINGS
    if variable.startswith(("<PROFILE>_", "_")):
        return variable.removeprefix("<PROFILE>") in suffixes
    if variable.startswith("*_"):
        return any(name.endswith(variable[1:]) for name in allowed)
    if variable.endswith(("_*", "_")):
        stem = variable.rstrip("*")
        return any(name.startswith(stem) for name in names) or any(stem.startswith(p) for p in NOT_SETTINGS)
    return variable in allowed or any(p.endswith("_") and variable.startswith(p) for p in NOT_SETTINGS)


@pytest.mark.parametrize("path", pages())
def test_every_variable_is_a_setting_or_a_known_other(path: Path) -> None:
    unknown = sorted(variable for variable in variables(page(path)) if not is_setting(variable))
    assert not unknown, f"{path.name}: not settings of app/config.py (nor in NOT_SETTINGS): {unknown}"


# -- URLs ----------------------------------------------------------------------------------------

URL = re.compile(
    r"(?:(https?)://)?(?:127\.0\.0\.1|localhost|gateway(?:\.example)?):(\d+)(/[^\s'\"`)\]|]*)?"
)
CURL_METHOD = re.compile(r"(?:-X|--request)\s+([A-Z]+)")
CURL_DATA = re.compile(r"(?<![\w-])(?:-d|--data(?:-binary|-raw|-urlencode)?)(?![\w-])")


def expand_braces(text: str) -> str:
    """``808{0,1}/x`` as ``8080/x 8081/x`` (a shell's brace expansion, one level)."""
    def expand(found: re.Match[str]) -> str:
        head, options, tail = found.group(1), found.group(2).split(","), found.group(3)
        return " ".join(f"{head}{option}{tail}" for option in options)

    return re.sub(r"(\S*?)\{([^{}\s]*,[^{}\s]*)\}(\S*)", expand, text)


def logical_lines(snippet: str) -> list[str]:
    return snippet.replace("\\\n", " ").splitlines()


def requests(found: Page) -> Iterator[tuple[str | None, int, str]]:
    """Each (method or None when any, port, path) a page sends to a listener; curl decides the method."""
    for snippet in found.code() + [found.prose()]:
        for line in logical_lines(snippet):
            line = expand_braces(line)
            method: str | None = None
            if "curl " in line:
                explicit = CURL_METHOD.search(line)
                method = explicit.group(1) if explicit else "POST" if CURL_DATA.search(line) else "GET"
            for scheme, port, path in URL.findall(line):
                if not path or (not scheme and method is None):
                    continue
                yield method, int(port), path.split("?")[0].split("#")[0].rstrip(".,:;")


@cache
def served() -> dict[int, tuple[Matcher[Route], Any]]:
    """Each listener's port with its route table and the Quart views beside it (health, status page...)."""
    defaults = load_settings({})
    listeners = {}
    for name in LISTENERS:
        routes = listener_routes(name)
        metrics = Metrics()
        app = create_listener_app(name, metrics, [], routes, max_request_bytes=defaults.max_request_bytes)
        if name == "gateway":
            status_page.register(app, metrics, {})
        port = getattr(defaults, f"{name}_port")
        listeners[port] = (Matcher([(route, route) for route in routes]), app.url_map.bind("localhost"))
    return listeners


def is_served(method: str | None, port: int, path: str) -> bool:
    table, views = served()[port]
    path = re.sub(r"<[^>/]+>", "placeholder", path)
    if method is None:
        if table.methods(path):
            return True
        method = "GET"
    if table.match(method, path) is not None:
        return True
    try:
        views.match(path, method=method)
    except (NotFound, MethodNotAllowed):
        return False
    return True


@pytest.mark.parametrize("path", pages())
def test_every_local_url_is_a_route_of_its_listener(path: Path) -> None:
    ports = served()
    unserved = sorted(
        {f"{method or 'any'} :{port}{target}" for method, port, target in requests(page(path))
         if port in ports and not is_served(method, port, target)}
    )
    assert not unserved, f"{path.name}: requests no listener serves: {unserved}"


# -- metrics -------------------------------------------------------------------------------------

SNAKE = re.compile(r"(?<![\w./$-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w(/-]|\.\w)")


@cache
def metric_names() -> frozenset[str]:
    """Every family and series name the gateway's registry exports."""
    families = {family.name for family in Metrics().registry.collect()}
    return frozenset(families | exported_series_names())


def metrics_named(found: Page) -> set[str]:
    prefixes = {name.split("_")[0] for name in metric_names() if "_" in name}
    return {
        name
        for snippet in found.code()
        for name in SNAKE.findall(snippet)
        if name.split("_")[0] in prefixes and name not in NOT_METRICS
    }


@pytest.mark.parametrize("path", pages())
def test_every_metric_named_is_exported(path: Path) -> None:
    unknown = sorted(metrics_named(page(path)) - metric_names())
    assert not unknown, f"{path.name}: metrics the gateway does not export: {unknown}"


# -- benchmark figures ---------------------------------------------------------------------------

RULE = "every figure on this page sits in a table or paragraph that names the command that printed it"
COMMAND = re.compile(r"`[^`]*(?:make bench[\w-]*|scripts/[\w-]+\.py)[^`]*`")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
# Sections that describe a command (its parameters and targets) hold no figures of a run.
METHOD_HEADING = re.compile(r"^#+ How\b")


def blocks(text: str) -> Iterator[tuple[str, str]]:
    """Each paragraph, list or table of the prose with the heading it sits under."""
    heading = ""
    for block in re.split(r"\n[ \t]*\n", text):
        block = block.strip("\n")
        if not block.strip():
            continue
        if block.startswith("#"):
            heading = block.splitlines()[0]
            rest = "\n".join(block.splitlines()[1:]).strip()
            if not rest:
                continue
            block = rest
        yield heading, block


def is_table(block: str) -> bool:
    return all(line.lstrip().startswith("|") for line in block.splitlines())


def figures(block: str) -> bool:
    """Whether a block holds a number outside its code spans (a table: in its rows below the header)."""
    if is_table(block):
        block = "\n".join(block.splitlines()[2:])
    return bool(re.search(r"\d", SPAN.sub("", block)))


def unattributed(text: str) -> list[str]:
    """The blocks with figures that name no command or no date (a table's caption is its own)."""
    wrong = []
    previous = ""
    for heading, block in blocks(text):
        if not METHOD_HEADING.match(heading) and figures(block):
            said = block + ("\n" + previous if is_table(block) else "")
            if not (COMMAND.search(said) and DATE.search(said)):
                wrong.append(block.splitlines()[0][:100])
        previous = block
    return wrong


def test_every_benchmark_figure_names_its_command_and_date() -> None:
    text = page(BENCHMARKS).prose()
    assert RULE in " ".join(text.split()).lower(), "docs/benchmarks.md states the rule it is held to"
    assert DATE.search(text) and COMMAND.search(text)
    wrong = unattributed(text)
    assert not wrong, f"docs/benchmarks.md: figures without the command that printed them and a date: {wrong}"


def test_the_figure_rule_catches_a_table_without_a_date() -> None:
    good = "Printed by `make bench` on 2026-12-01:\n\n| run | req/s |\n|-----|------:|\n| one | 1,164 |\n"
    assert unattributed(good) == []
    assert unattributed(good.replace(" on 2026-12-01", "")) == ["| run | req/s |"]
    assert unattributed("### How `make bench` measures\n\nHey at 64 connections.\n") == []
    assert unattributed("### Results\n\nHey at 64 connections.\n") == ["Hey at 64 connections."]
