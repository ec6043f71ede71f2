"""The documentation follows the code: the generated node reference is current, every
relative link and image of README.md and docs/ resolves, the README's parameter table
matches the node's, and no file speaks of how the work was organised."""

import re
import subprocess
from pathlib import Path

import pytest

from bootstap_ros.ros.settings import PARAMETERS
from helpers.tools import load_tool

REPO = Path(__file__).resolve().parents[1]


reference = load_tool("node_reference")  # writes docs/node-reference.md
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))


def test_node_reference_page_is_what_the_command_writes():
    page = REPO / "docs" / "node-reference.md"
    assert page.is_file(), f"{page} is missing: run `{reference.COMMAND}`"
    assert page.read_text() == reference.render(), (
        f"{page.relative_to(REPO)} differs from bootstap_ros/ros/settings.py, interfaces.py or "
        f"launch/tracker.launch.py: run `{reference.COMMAND}` (or `make docs-reference`) and "
        "commit the page")


def test_reference_check_mode_reports_a_stale_page(tmp_path, capsys):
    page = tmp_path / "node-reference.md"
    assert reference.main(["--output", str(page)]) == 0
    assert reference.main(["--output", str(page), "--check"]) == 0
    page.write_text(page.read_text().replace("| `max_points` | integer | `256` |",
                                             "| `max_points` | integer | `128` |"))
    assert reference.main(["--output", str(page), "--check"]) == 1
    assert reference.COMMAND in capsys.readouterr().err


# ------------------------------------------------------------------------------ links

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def prose(text):
    """Markdown without fenced code blocks and code spans (links there are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def github_slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped (but - and _),
    spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page):
    seen, result = {}, set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(page):
    """'target: why' for each relative link or image of `page` that does not resolve."""
    problems = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"{target}: no file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_image_resolves(page):
    assert broken_links(page) == []


def test_the_link_check_finds_broken_links_and_anchors(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"png")
    (tmp_path / "other.md").write_text("# Other page\n\n## The `tracks_3d` field (x, y)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n![ok](images/a.png) ![gone](images/b.png) [ok](other.md#the-tracks_3d-field-x-y)\n"
        "[bad anchor](other.md#nothing) [self](#title) [web](https://example.org/x)\n"
        "`[not a link](missing.md)`\n\n```\n[nor this](missing.md)\n```\n")
    assert broken_links(page) == [f"images/b.png: no file {tmp_path / 'images' / 'b.png'}",
                                  "other.md#nothing: no heading #nothing in other.md"]


def test_readme_shows_a_picture_and_stays_short():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    images = [t for t in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", prose(text))]
    assert images and all((REPO / image).is_file() for image in images)


def test_readme_parameter_table_matches_the_node():
    """Each row of the README's *Most used parameters* table names a parameter of the node
    with its default as config/tracker.yaml writes it."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Most used parameters", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", section, re.MULTILINE)
    assert len(rows) >= 10
    defaults = {spec.name: reference.yaml_value(spec.default) for spec in PARAMETERS}
    for name, default in rows:
        assert name in defaults, f"README names a parameter the node does not have: {name}"
        assert default == defaults[name], f"README gives {name} the default {default}, the node {defaults[name]}"


# ------------------------------------------------------------------------------ wording

# Phrases about how the work was organised, never about the software. Code identifiers
# (TrackingSession, onnxruntime's InferenceSession, a Unix session leader) do not match.
PROCESS_WORDING = re.compile("|".join([
    r"\b(?:earlier|previous|later|next|this|that|our|every|each|one|last|first|second|third|"
    r"[a-z]+th)\s+(?:work\s+)?session\b",
    r"\bsession's\s+(?:gpu|device|time|start|end|work|budget)\b",
    r"\b(?:device|gpu|machine|h200|h100)s?\s+(?:was|were|is|are)\s+lent\b",
    r"\blent\s+(?:to|for|out)\b",
    r"\b(?:gpu|device)\s+time\s+(?:went|was\s+left|was\s+spent|ran\s+out)\b",
    r"\bno\s+(?:gpu|device)\s+time\b",
    r"\bhelpers'|\bother\s+helpers\b|\bhelper\s+sessions?\b",
    r"\bworktrees?\b",
]), re.IGNORECASE)
# In the user-facing pages, outside code, not even the bare word.
PAGE_WORDING = re.compile(r"\bsessions?\b|\blent\b|\bhelpers?\b|\bagents?\b", re.IGNORECASE)
BINARY_SUFFIXES = {".pt", ".npz", ".png", ".gif", ".jpg", ".mp4", ".pkl", ".npy"}


def tracked_text_files():
    try:
        names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.splitlines()
        files = [REPO / name for name in names]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        skip = {".git", ".venv", ".venv-jazzy", "build", "install", "log", "outputs", "runs"}
        files = [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)]
    this = Path(__file__).resolve()
    return [p for p in files if p.suffix not in BINARY_SUFFIXES and p.is_file() and p.resolve() != this]


def process_wording(text, pattern=PROCESS_WORDING):
    return [f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}" for m in pattern.finditer(text)]


def test_no_file_speaks_of_how_the_work_was_organised():
    found = {}
    for path in tracked_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits = process_wording(text)
        if path.suffix in (".md", ".rst"):
            hits += process_wording(prose(text), PAGE_WORDING)
        if hits:
            found[str(path.relative_to(REPO))] = hits
    assert found == {}, "speak of the software only: " + repr(found)


def test_the_wording_check_catches_process_talk_and_spares_code():
    for sentence in ("measured in an earlier session", "no device was lent to it",
                     "in this project's twelfth session", "the session's GPU time went to it",
                     "no GPU time was left", "other helpers' edits"):
        assert process_wording(sentence), sentence
    for code in ("self.session = TrackingSession(tracker)", "sessions = {name: ort.InferenceSession()}",
                 "Make `query_set` the session's set", "a session and process-group leader",
                 "a helper function", "Costs CPU/GPU time"):
        assert process_wording(code) == [], code
    assert process_wording(prose("the `TrackingSession` and `ros/session.py`"), PAGE_WORDING) == []
    assert process_wording(prose("written in one session"), PAGE_WORDING)


TOOL_PARSERS = {"bootstap-track": "bootstap_ros.cli.track", "bootstap-queries": "bootstap_ros.cli.queries",
                "bootstap-eval": "bootstap_ros.eval.cli"}


def documented_commands(text):
    """(tool, arguments) of every concrete command of TOOL_PARSERS in the page's bash blocks
    (synopses, with their [optional] parts and | choices, are left out)."""
    import shlex

    for block in re.findall(r"^ *```bash\n(.*?)^ *```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in TOOL_PARSERS and not any(c in line for c in "[|"):
                yield words[0], words[1:]


def test_documented_tool_commands_parse_as_written():
    import importlib

    commands = [(page, tool, args) for page in PAGES for tool, args in documented_commands(page.read_text())]
    assert {tool for _, tool, _ in commands} == set(TOOL_PARSERS)
    for page, tool, args in commands:
        parser = importlib.import_module(TOOL_PARSERS[tool]).build_parser()
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{page.name}: `{tool} {' '.join(args)}` does not parse")
