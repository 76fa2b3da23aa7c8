"""The README is short, its examples run, its links resolve, and the text it quotes about a feature is what the
shipped data say (issues 16 and 22).

* README.md stays under `README_LIMIT` characters (issue 22: what it is, a picture, install and test commands, a
  tour, links); everything else lives in docs/ by topic.
* Every ```python block of the README and of the topic pages in `DOC_PAGES` runs as a script in a fresh process (a
  temporary working folder, a timeout). A block is skipped only when an HTML comment ``<!-- no-test: REASON -->``
  right before it says it needs the network; the study example runs with a smaller ``n`` (`SUBSTITUTIONS`).
* Every command in the README's ```bash blocks is either run — ``circuits ...`` through the console script's
  ``main`` in this process, in a temporary folder, in README order (later commands read files earlier ones wrote),
  some with shorter options (`SHORTER`) — or skipped for a reason listed in `SKIPPED` (installs, servers, jobs of
  minutes). A command that is neither fails the test, so a new README command must be classified here.
* Every relative link in README.md and docs/*.md points at a file that exists, and a ``#fragment`` into a Markdown
  file at one of its headings.
* The generated regions of README.md (the feature example) equal what ``docs/readme_examples.py`` produces from
  the current model, dictionaries and dashboard database.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_LIMIT = 15_000  # characters (issue 22)
# topic pages moved out of the README whose python blocks run too (other pages' examples are tested by their owners)
DOC_PAGES = ["organism.md", "dictionaries.md", "attribution.md", "exports.md", "dashboards.md", "explorer.md",
             "benchmarks.md", "history.md", "development.md", "index.md"]
NO_TEST = re.compile(r"<!-- no-test: (?P<reason>.+?) -->")

# (text in the block, replacement, why): applied to the ```python block that contains the text
SUBSTITUTIONS = [
    ('StudySpec("ioi", n=200,', 'StudySpec("ioi", n=4,',
     "the full study takes ~6 min on 2 cores; n=4 runs the same pipeline, worker processes included"),
]

# command prefix → why the test does not run it
SKIPPED = {
    ("python", "-m", "venv"): "creates a virtual environment (the tests already run in one)",
    (".",): "activates the virtual environment",
    ("pip", "install"): "installs packages (network)",
    ("apt-get",): "installs system packages (root, network)",
    ("streamlit", "run"): "starts a server; tests/test_browser.py drives it in Chromium",
    ("python", "-m", "pytest"): "the test suite itself",
    ("circuits", "dashboards", "build"): "builds every dashboard (~5 min; rewrites the shipped database)",
    ("circuits", "study", "ioi"): "a full study (~10 min); the README's Python study example runs the same "
                                  "pipeline with n=4, tests/test_studies.py the command",
}

# command prefix → options appended when the test runs it (why)
SHORTER = {
    ("circuits", "organism", "eval"): (["--subsample", "0.02", "--out", "-", "--quiet"],
                                      "2% of the prompts, and the shipped eval.json is not rewritten"),
}


def fenced_blocks(lang: str, path: Path = README) -> list[tuple[int, str | None, str]]:
    """(line number, no-test reason or None, code) of every ```lang block of a Markdown file (the README)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            prev = next((ln for ln in reversed(lines[:start - 1]) if ln.strip()), "")
            m = NO_TEST.search(prev)
            out.append((start, m.group("reason") if m else None, "\n".join(body) + "\n"))
        i += 1
    return out


def strip_comment(line: str) -> str:
    """`line` without a shell comment: a ``#`` that starts a word, outside quotes (``M3#1184`` is not one)."""
    quote = None
    for j, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (j == 0 or line[j - 1].isspace()):
            return line[:j]
    return line


def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a bash block (continuation lines joined, comments dropped, split at ``&&``)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(strip_comment(line))
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            if words[:cut]:
                commands.append(words[:cut])
            words = words[cut + 1:]
    return commands


def classify(argv: list[str]) -> tuple[str, str | list[str]]:
    """("skip", reason) or ("run", argv to run)."""
    for prefix, reason in SKIPPED.items():
        if tuple(argv[:len(prefix)]) == prefix:
            return "skip", reason
    if argv[0] != "circuits":
        return "unknown", f"{shlex.join(argv)}: neither run nor listed in SKIPPED"
    for prefix, (extra, _) in SHORTER.items():
        if tuple(argv[:len(prefix)]) == prefix:
            return "run", argv + extra
    return "run", argv


# -- python blocks ---------------------------------------------------------------------------------------------------


README_PYTHON = fenced_blocks("python")
PYTHON_BLOCKS = [("README.md", *b) for b in README_PYTHON] + [
    (f"docs/{page}", *b) for page in DOC_PAGES if (ROOT / "docs" / page).exists()
    for b in fenced_blocks("python", ROOT / "docs" / page)]


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8"))
    assert n <= README_LIMIT, f"README.md has {n:,} characters (limit {README_LIMIT:,}): move detail into docs/"


def test_python_blocks_are_found_and_skips_are_justified():
    assert len(README_PYTHON) >= 3
    skipped = [(page, line, reason) for page, line, reason, _ in PYTHON_BLOCKS if reason is not None]
    assert len(skipped) <= 2, f"too many python blocks marked no-test: {skipped}"
    for page, line, reason in skipped:
        assert re.search(r"\b(network|hub|online|download)", reason), \
            f"{page} line {line}: a python block may be skipped only when it needs the network ({reason!r})"
    for text, _, _ in SUBSTITUTIONS:
        assert sum(text in code for *_, code in PYTHON_BLOCKS) == 1, f"substitution {text!r} matches no block"


#: A Python process that has imported torch, transformer-lens and circuits once; it runs each block in a fork of
#: itself (a fresh ``__main__`` from the block's file, its own folder and output files), so that the blocks do not
#: each pay the ~8 s of importing transformer-lens. A block that starts worker processes spawns them as usual.
PRELOADED = r"""
import json, os, runpy, sys, traceback
import torch, transformer_lens, circuits  # noqa: F401
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.chdir(job["cwd"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = [job["script"]]
            sys.path[0] = os.path.dirname(job["script"])
            runpy.run_path(job["script"], run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@pytest.fixture(scope="module")
def preloaded():
    """`run(script, folder) -> (returncode, stdout, stderr)` through the `PRELOADED` process (one per module)."""
    import json
    import select

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", PRELOADED], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)

    def run(script: Path, folder: Path, timeout: float = 300) -> tuple[int, str, str]:
        out, err = folder / "block.stdout", folder / "block.stderr"
        proc.stdin.write(json.dumps({"script": str(script), "cwd": str(folder), "stdout": str(out),
                                     "stderr": str(err)}) + "\n")
        proc.stdin.flush()
        if not select.select([proc.stdout], [], [], timeout)[0]:
            proc.kill()
            pytest.fail(f"{script.name} did not finish within {timeout:.0f} s")
        answer = proc.stdout.readline()
        assert answer, f"the preloaded Python process ended (exit {proc.poll()})"
        return json.loads(answer)["rc"], out.read_text(encoding="utf-8"), err.read_text(encoding="utf-8")

    yield run
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.mark.parametrize("page, line, reason, code", PYTHON_BLOCKS,
                         ids=[f"{b[0].rsplit('/', 1)[-1]}:line{b[1]}" for b in PYTHON_BLOCKS])
def test_python_block_runs(page, line, reason, code, tmp_path, preloaded):
    if reason is not None:
        pytest.skip(f"{page} line {line} is marked no-test: {reason}")
    for text, replacement, _ in SUBSTITUTIONS:
        code = code.replace(text, replacement)
    script = tmp_path / f"block_line{line}.py"
    script.write_text(code, encoding="utf-8")
    rc, _, stderr = preloaded(script, tmp_path)
    assert rc == 0, f"{page}: python block at line {line} failed:\n{stderr[-4000:]}"
    assert "Traceback" not in stderr


def test_a_failing_block_fails_in_the_preloaded_process(tmp_path, preloaded):
    """Negative control for `test_python_block_runs`: an exception, a non-zero exit and a crash of the block are
    each reported (and the process goes on serving blocks); output goes to the block's own files."""
    cases = {"raise ValueError('boom')": 1, "import sys; sys.exit(3)": 3, "import os; os._exit(5)": 5,
             "print('hello')": 0}
    for i, (code, want) in enumerate(cases.items()):
        script = tmp_path / f"case{i}.py"
        script.write_text(code, encoding="utf-8")
        rc, stdout, stderr = preloaded(script, tmp_path)
        assert rc == want, (code, rc, stderr)
    assert stdout == "hello\n"
    script.write_text("import os\nprint(__name__, os.getcwd())\n", encoding="utf-8")
    assert preloaded(script, tmp_path)[1] == f"__main__ {tmp_path}\n"


# -- links -----------------------------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# files that other work in progress is adding now; a link to one of them may dangle until it lands (keep this short
# and empty it once they exist)
IN_PROGRESS: set[str] = set()


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file (lower case, punctuation dropped, spaces to hyphens)."""
    anchors, seen, fence = set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"#{1,6} (.+)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_every_doc_page_is_linked_from_the_index_and_the_readme():
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    index = set(re.findall(r"\]\(([\w.-]+\.md)[)#]", (ROOT / "docs" / "index.md").read_text(encoding="utf-8")))
    readme = set(re.findall(r"\]\(docs/([\w.-]+\.md)[)#]", README.read_text(encoding="utf-8")))
    assert not pages - index - {"index.md"}, f"docs/index.md does not link {sorted(pages - index - {'index.md'})}"
    assert not pages - readme, f"README.md does not link {sorted(pages - readme)}"


def test_heading_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n## How the targets were reached (2026-11-21, phase-5 organism)\n"
                    "```\n# not a heading\n```\n## A title\n", encoding="utf-8")
    assert heading_anchors(page) == {"a-title", "how-the-targets-were-reached-2026-11-21-phase-5-organism",
                                     "a-title-1"}


def test_relative_links_resolve():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, fragment = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            rel = str(dest.relative_to(ROOT)) if dest.is_relative_to(ROOT) else str(dest)
            if not dest.exists() and rel not in IN_PROGRESS:
                broken.append(f"{where}: no file {rel}")
            elif fragment and dest.suffix == ".md" and fragment not in heading_anchors(dest):
                broken.append(f"{where}: no heading #{fragment} in {dest.name}")
    assert not broken, "\n".join(broken)


# -- bash blocks -----------------------------------------------------------------------------------------------------


def test_shell_parsing():
    code = ('circuits feature M3#1184 --text "a # b"   # a comment\n'
            "pip install x && circuits trace \\\n    \"A B\" --json a.json\n")
    assert shell_commands(code) == [["circuits", "feature", "M3#1184", "--text", "a # b"], ["pip", "install", "x"],
                                    ["circuits", "trace", "A B", "--json", "a.json"]]


def test_shell_commands_run(tmp_path, monkeypatch, capsys):
    """Every cheap command of the README's bash blocks exits 0, in README order, in one temporary folder."""
    from circuits.cli import main
    from circuits.model import DATA_DIR

    db_copy = tmp_path / "dashboards.sqlite"
    shutil.copy(DATA_DIR / "dashboards" / "organism.sqlite", db_copy)  # --label writes: never into the shipped one
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    have_dot = shutil.which("dot") is not None
    ran, skipped, unknown = [], [], []
    for line, _, code in fenced_blocks("bash"):
        for argv in shell_commands(code):
            what, detail = classify(argv)
            if what == "skip":
                skipped.append((line, shlex.join(argv), detail))
                continue
            if what == "unknown":
                unknown.append(f"README line {line}: {detail}")
                continue
            run = list(detail)
            if run[:2] == ["circuits", "feature"] and "--label" in run:
                run += ["--db", str(db_copy)]
            if not have_dot:  # Graphviz missing: the rest of the command still runs (tests/test_export.py says so)
                for flag in ("--svg", "--png"):
                    while flag in run:
                        k = run.index(flag)
                        del run[k:k + 2]
            code_ = main(run[1:])
            out = capsys.readouterr()
            assert code_ == 0, f"README line {line}: `{shlex.join(argv)}` exited {code_}:\n{out.err[-3000:]}"
            assert out.out.strip(), f"README line {line}: `{shlex.join(argv)}` printed nothing"
            ran.append(argv[:3])
    assert not unknown, "\n".join(unknown)
    assert ["circuits", "trace", "When Mary and John went to the store, John gave a drink to"] in ran
    assert any(a[:2] == ["circuits", "feature"] for a in ran) and ["circuits", "graph", "diff"] in ran
    # the skip list stays short and every entry is used (a stale entry hides nothing)
    assert len(skipped) <= 20
    used = {p for p in SKIPPED for _, cmd, _ in skipped if tuple(shlex.split(cmd)[:len(p)]) == p}
    assert used == set(SKIPPED), f"SKIPPED entries no README command uses: {set(SKIPPED) - used}"


# -- generated text --------------------------------------------------------------------------------------------------


def test_quoted_feature_text_is_generated_from_the_current_data():
    """The README's feature example (commands and description) is what docs/readme_examples.py writes for the
    shipped model, dictionaries and dashboards; after retraining, `python docs/readme_examples.py --write`."""
    spec = importlib.util.spec_from_file_location("readme_examples", ROOT / "docs" / "readme_examples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = README.read_text(encoding="utf-8")
    names = [m.group("name") for m in mod.MARKER.finditer(text)]
    assert names == ["feature-commands", "feature-example"]
    assert mod.render(text, mod.regions()) == text, \
        "README.md quotes a feature differently from the current data: run `python docs/readme_examples.py --write`"
    # and no hand-written quote of a particular feature is left outside the generated regions
    outside = mod.MARKER.sub("", text)
    stale = re.findall(r"circuits feature (?:[MA]\d+#|mlp:|attn:|transcoder_L|attn_sae_L)\S*", outside)
    assert not stale, f"README quotes features outside the generated regions: {stale}"


# -- pytest configuration (issue 16, item 15) ------------------------------------------------------------------------


def test_pytest_prints_skip_reasons_and_every_skip_has_one():
    """`python -m pytest -q` lists skipped tests with their reasons (-rs), and every skip in tests/ gives one."""
    opts = re.search(r'^addopts = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert re.search(r"(^|\s)-r\w*[sa]", opts), f"addopts {opts!r} does not print skip reasons (-rs)"
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name.endswith(("mark.skipif", "mark.skip")):
                assert any(k.arg == "reason" for k in node.keywords), f"{path.name}:{node.lineno}: {name} without reason"
            elif name.endswith("pytest.skip"):
                assert node.args or node.keywords, f"{path.name}:{node.lineno}: pytest.skip() without a reason"
