"""Every shell block in README.md and docs/ runs, as vector-quantize-pytorch's test_readme does: a
```bash block is executed (in a fresh home, from the repository root, `mqvq` on PATH) unless the
line before it says `<!-- doc-test: skip (why) -->`, and then the reason is shown as the skip
reason. Blocks of one page run in order in one home, so a page can build on what it ran before.
Every page the README links exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*doc-test:\s*skip\s*\((.+)\)\s*-->")


def shell_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, script, skip reason or None) of each ```bash block."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            m = SKIP.search(prev)
            out.append((i + 1, "\n".join(lines[i + 1 : end]), m.group(1) if m else None))
            i = end
        i += 1
    return out


def test_the_parser_finds_blocks_and_their_skip_reasons(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "text\n\n```bash\necho a\n```\n\n<!-- doc-test: skip (needs a GPU) -->\n```bash\necho b\n```\n```python\nx\n```\n"
    )
    assert shell_blocks(page) == [(3, "echo a", None), (8, "echo b", "needs a GPU")]


def test_the_readme_links_pages_that_exist():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|reports)/[^)#]+)\)", text)
    assert len(links) >= 10
    assert [link for link in links if not (ROOT / link).exists()] == []
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= {Path(link).name for link in links}  # every page is linked


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_in_the_readme_and_docs_resolves_to_a_file_or_an_anchor():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code blocks are code
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)}
                if anchor not in slugs:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_heading_anchors_follow_githubs_rule():
    assert _slug("4. Preemption, time limits, requeue") == "4-preemption-time-limits-requeue"
    assert _slug("`mqvq study run`") == "mqvq-study-run"


def test_the_cli_reference_is_current():
    """docs/cli.md is generated from the CLI: a changed option, default or help text without it is stale."""
    from mqvq.cli.reference import reference

    assert (ROOT / "docs" / "cli.md").read_text() == reference(), (
        "docs/cli.md is stale: python -m mqvq.cli.reference > docs/cli.md"
    )


def test_the_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024


@pytest.mark.integration
@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_shell_block_runs(page, tmp_path):
    blocks = shell_blocks(page)
    runnable = [(line, script) for line, script, reason in blocks if reason is None]
    if not runnable:
        pytest.skip("; ".join(f"line {line}: {reason}" for line, _, reason in blocks) or "no shell blocks")
    env = {
        **os.environ,
        "MQVQ_HOME": str(tmp_path / "home"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    for line, script in runnable:
        p = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert p.returncode == 0, f"{page.name}:{line} exited {p.returncode}:\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}"
