"""The README and docs/ cannot drift from the code: every `gptforge ...` command in their code blocks parses with
the real command line's parser (parsed only, never run; placeholders such as RUN are plain values to argparse, so
no line is skipped), every `--flag` named in the prose exists, every relative link (and #anchor) leads somewhere,
every `make X` names a Makefile target, every download hint is the one the error messages give, and RESULTS.md's
tables hold only figures recorded in its History. Each checker is shown to reject a bad case."""

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from gptforge.cli import build_parser, preset_asking_for_help
from gptforge.paths import hf_download_command

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SHELL_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "<", "2>", "&"}


def code_blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def shell_lines(block: str) -> list[str]:
    """The block's commands, a line ending in `\\` joined with the next."""
    return block.replace("\\\n", " ").splitlines()


def gptforge_argv(line: str) -> list[str] | None:
    """The arguments after `gptforge` (or `.venv/bin/gptforge`, `-m gptforge`) up to a shell operator; None when
    the line runs no gptforge command (pip install "gptforge[hf]" does not)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # not shell (a log line, a table): runs nothing
        return None
    for i, word in enumerate(words):
        runs = word == "gptforge" and (i == 0 or words[i - 1] == "-m" or words[i - 1] in SHELL_OPERATORS)
        if runs or word.endswith("/bin/gptforge"):
            rest = words[i + 1:]
            ends = [j for j, w in enumerate(rest) if w in SHELL_OPERATORS]
            return rest[:ends[0]] if ends else rest
    return None


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in PAGES:
        for block in code_blocks(page.read_text(encoding="utf-8")):
            for line in shell_lines(block):
                argv = gptforge_argv(line)
                if argv is not None:
                    found.append((f"{page.relative_to(ROOT)}: {line.strip()}", argv))
    return found


def parse_status(argv: list[str]) -> tuple[int, str]:
    """Parse `argv` as `gptforge.cli.main` does, without running the command: 0, or argparse's exit status and
    its message (`--help` exits 0 after printing)."""
    parser = build_parser(preset_asking_for_help(argv), help_asked=bool({"-h", "--help"} & set(argv)))
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0), err.getvalue()
    return (0, "") if args.command is not None else (2, "no command")


COMMANDS = documented_commands()


def test_the_docs_hold_commands_of_every_kind() -> None:
    """The extraction finds what is there: a parser that found nothing would pass every check below."""
    commands = {argv[0] for _, argv in COMMANDS if argv}
    assert {"train", "summary", "prepare", "plot", "sample", "chat", "eval", "serve", "bench", "export"} <= commands
    assert any("--nproc" in argv for _, argv in COMMANDS)  # a continued torchrun line was joined and found


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_every_documented_command_parses(where: str, argv: list[str]) -> None:
    status, message = parse_status(argv)
    assert status == 0, f"{where}\n{message}"


def test_the_checker_rejects_a_bad_command() -> None:
    """The negative self-check: the same extraction and parse refuse what the CLI refuses."""
    block = "gptforge train --preset tiny --no-such-flag 1   # a comment\ngptforge sample --top-q 0.9 RUN\n" \
            "gptforge export --run RUN --format pdf --out x\ngptforge bench \\\n    --preset no-such-preset\n"
    argvs = [gptforge_argv(line) for line in shell_lines(block)]
    assert argvs[3] == ["bench", "--preset", "no-such-preset"]
    assert all(parse_status(argv)[0] == 2 for argv in argvs if argv is not None)
    assert parse_status(["sample", "--top-p", "0.9", "RUN"]) == (0, "")
    assert gptforge_argv('pip install -e ".[app]"          # gptforge + the Gradio demo') is None
    assert gptforge_argv("torchrun --nproc_per_node 2 -m gptforge train --preset tiny") == ["train", "--preset",
                                                                                            "tiny"]


# Flags of the other tools the docs run: torchrun's, pip's, pytest-xdist's (the benchmark scripts' are read from
# their source below).
OTHER_TOOLS_FLAGS = {"--master-addr", "--master-port", "--node-rank", "--rdzv-backend", "--rdzv-endpoint",
                     "--rdzv-id", "--nnodes", "--nproc-per-node", "--extra-index-url", "--dist"}


def gptforge_flags() -> set[str]:
    parser = build_parser(help_asked=False)
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return {flag for command in commands.choices.values() for action in command._actions
            for flag in action.option_strings if flag.startswith("--")}


def unknown_flags(text: str, known: set[str]) -> set[str]:
    """`--flags` named in the prose's inline code (`--max-new-tokens-cap`) that nothing documented takes."""
    spans = re.findall(r"`([^`\n]+)`", FENCE.sub("", text))
    return {flag for span in spans for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?!\w)", span)} - known


def test_every_flag_named_in_the_prose_exists() -> None:
    scripts = "".join(path.read_text(encoding="utf-8") for path in (ROOT / "benchmarks").glob("*.py"))
    known = gptforge_flags() | OTHER_TOOLS_FLAGS | set(re.findall(r"\"(--[a-z][a-z0-9-]*)\"", scripts))
    assert {"--max-new-tokens-cap", "--init-from", "--target-loss", "--nanogpt-dir"} <= known
    assert {page.name: unknown_flags(page.read_text(encoding="utf-8"), known) for page in PAGES} == \
        {page.name: set() for page in PAGES}
    assert unknown_flags("`--top-q 0.9` and `--top-p`, `--log_interval=50`\n", known) == {"--top-q"}


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors: lower case, punctuation but `-` and `_` dropped, spaces as `-`, repeats numbered."""
    anchors: set[str] = set()
    outside_code = FENCE.sub("", text)
    for heading in re.findall(r"^#+\s+(.*?)\s*$", outside_code, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 1
        while anchor in anchors:
            anchor, n = f"{slug}-{n}", n + 1
        anchors.add(anchor)
    return anchors


def broken_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text(encoding="utf-8")):
            broken.append(f"{target}: no such heading")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_checker_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n## The `--loss-chunks` flag (CPU)\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("# Page\n[ok](other.md#the---loss-chunks-flag-cpu) [self](#page) [gone](missing.md) "
                    "[no heading](other.md#nowhere)\n```\n[in code](not-checked.md)\n```\n", encoding="utf-8")
    assert broken_links(page) == ["missing.md: no such file", "other.md#nowhere: no such heading"]


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))


def make_targets_named(text: str) -> set[str]:
    """The targets of `make X` in code: a code block's line, or an inline code span (prose's "make sure" is not)."""
    in_blocks = {target for block in code_blocks(text) for target in re.findall(r"^\s*make ([a-z][\w-]*)", block, re.M)}
    return in_blocks | set(re.findall(r"`make ([a-z][\w-]*)", FENCE.sub("", text)))


def test_every_make_target_named_in_the_docs_exists() -> None:
    named = {target for page in PAGES for target in make_targets_named(page.read_text(encoding="utf-8"))}
    assert {"train", "test", "test-quick", "fuzz"} <= named
    assert named - makefile_targets() == set()
    assert make_targets_named("to make sure, run `make tset`:\n```bash\nmake trian ARGS=1\n```\n") == {"tset", "trian"}
    assert {"tset", "trian"} & makefile_targets() == set()


def test_every_download_hint_in_the_docs_is_the_one_the_errors_give() -> None:
    """`hf download ...` lines in code blocks are exactly hf_download_command's (the offline error's)."""
    hints = [line.strip() for page in PAGES for block in code_blocks(page.read_text(encoding="utf-8"))
             for line in shell_lines(block) if line.strip().startswith(("hf download", "huggingface-cli download"))]
    assert hints, "the docs give the download command"
    assert [hint.split("#")[0].strip() for hint in hints] == [hf_download_command(hint.split()[2]) for hint in hints]


def numbers_not_in_history(results: str) -> list[str]:
    """The numbers of RESULTS.md's tables (above `# History`) that the History does not hold: a table only
    sorts what was measured and recorded below, it never adds a figure."""
    tables, history = results.split("\n# History\n", 1)
    rows = [re.sub(r"\]\([^)]*\)", "]", line) for line in tables.splitlines() if line.startswith("|")]
    return [number for row in rows for number in re.findall(r"\d[\d,.]*\d|\d", row) if number not in history]


def test_the_results_tables_hold_only_figures_from_the_history() -> None:
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    assert results.count("\n| ") > 20  # the tables are there
    assert numbers_not_in_history(results) == []
    invented = "| when | result |\n| --- | --- |\n| today | 123.4 ms |\n\n# History\n\n| old | 98.7 ms |\n"
    assert numbers_not_in_history(invented) == ["123.4"]


def test_the_readme_is_a_front_page() -> None:
    """Under 200 lines (issue 24): the reference lives in docs/, and the README links every page there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 200
    linked = {Path(target.partition("#")[0]).name for target in LINK.findall(readme) if target.startswith("docs/")}
    assert {page.name for page in (ROOT / "docs").glob("*.md")} <= linked


def missing_repo_paths(text: str, root: Path) -> list[str]:
    """The repository paths the prose names (`benchmarks/x.py`, `tests/test_y.py`, `docs/z.png`) that do not exist."""
    named = re.findall(r"(?<![\w./-])((?:benchmarks|tests|src|notebooks|scripts|docs)/[\w./-]*\w)", text)
    return [path for path in named if not (root / path).exists()]


def test_every_repository_path_named_in_the_docs_exists(tmp_path: Path) -> None:
    assert {page.name: missing_repo_paths(page.read_text(encoding="utf-8"), ROOT) for page in PAGES} == \
        {page.name: [] for page in PAGES}
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bench_a.py").touch()
    text = "run `benchmarks/bench_a.py`, then benchmarks/bench_gone.py and ../shared/benchmarks/x.py\n"
    assert missing_repo_paths(text, tmp_path) == ["benchmarks/bench_gone.py"]
