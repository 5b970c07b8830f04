"""The documentation stays short where it must and true to the tree: the README's size, links that
resolve (files and headings), commands, paths and Python names that exist, a README per recipe, the
LICENSE. Reads files only (no imports of the package, no runs)."""

import re

import pytest

from conftest import REPO

README = REPO / "README.md"
README_LIMIT = 12 * 1024  # bytes
DOCS = sorted((REPO / "docs").glob("*.md"))
RECIPES = sorted(p.parent.name for p in (REPO / "recipes").glob("*/train.py"))
# Every user-facing Markdown file: what the path, command and name checks read.
USER_DOCS = [README, *DOCS, *(REPO / "recipes" / r / "README.md" for r in RECIPES),
             REPO / "benchmarks" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def rel(path):
    return path.relative_to(REPO).as_posix()


def slug(heading):
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, re.M)}


def relative_links(path):
    """``[(target, anchor)]`` of the relative links of a Markdown file (code blocks skipped)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        found.append((file_part, anchor))
    return found


def test_readme_is_at_most_12_kb():
    size = README.stat().st_size
    assert size <= README_LIMIT, (
        f"README.md is {size} bytes (limit {README_LIMIT}): move detail into docs/ and link it."
    )


def test_license_is_apache_2():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0" in text


def test_docs_folder_has_the_guides():
    names = {p.name for p in DOCS}
    for name in ("training.md", "backbones.md", "methods.md", "after_training.md",
                 "differences.md", "extending.md"):
        assert name in names, f"docs/{name} is missing"

def test_each_guide_has_one_title_and_no_link_calls_it_by_another_guides_title():
    titles = {}
    for doc in DOCS:
        found = re.findall(r"^# (.+)$", FENCE.sub("", doc.read_text(encoding="utf-8")), re.M)
        assert len(found) == 1, (rel(doc), found)
        titles[doc.name] = found[0].split(":")[0].strip().lower()  # "Training", "Sweeps", ...
    assert len(set(titles.values())) == len(titles), titles
    for doc in [README, *DOCS]:
        text = FENCE.sub("", doc.read_text(encoding="utf-8"))
        for words, target in re.findall(r"\[([^\]]*)\]\(([^)\s#]+\.md)[^)]*\)", text):
            page = (doc.parent / target).resolve()
            if page not in DOCS:
                continue
            page = page.name
            others = [name for name, title in titles.items()
                      if name != page and words.strip().lower() == title]
            assert not others, f"{rel(doc)} links {target} as '{words}', the title of {others}"



@pytest.mark.parametrize("doc", USER_DOCS, ids=rel)
def test_every_relative_link_points_to_an_existing_file_and_heading(doc):
    assert doc.is_file(), f"{rel(doc)} is missing"
    problems = []
    for target, anchor in relative_links(doc):
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{target}#{anchor}: no such heading in {rel(path)}")
    assert not problems, f"{rel(doc)}: " + "; ".join(problems)


def test_every_recipe_has_a_readme_and_a_command_in_the_readme():
    readme = README.read_text(encoding="utf-8")
    for recipe in RECIPES:
        assert (REPO / "recipes" / recipe / "README.md").is_file(), f"recipes/{recipe}/README.md"
        assert f"python recipes/{recipe}/train.py" in readme, f"no command for {recipe} in README"
        assert f"recipes/{recipe}/README.md" in readme, f"README does not link {recipe}'s README"


def _module_file(dotted):
    """The file of a dotted module name of this repository, or None."""
    path = REPO.joinpath(*dotted.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@pytest.mark.parametrize("doc", USER_DOCS, ids=rel)
def test_every_command_named_exists(doc):
    text = doc.read_text(encoding="utf-8")
    problems = []
    for module in set(re.findall(r"python -m (petl_modules(?:\.\w+)+)", text)):
        path = REPO.joinpath(*module.split("."))
        if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
            problems.append(f"python -m {module}")
    for recipe in set(re.findall(r"recipes/(\w+)/train\.py", text)):
        if not (REPO / "recipes" / recipe / "train.py").is_file():
            problems.append(f"recipes/{recipe}/train.py")
    assert not problems, f"{rel(doc)} names commands that do not exist: {sorted(problems)}"


@pytest.mark.parametrize("doc", USER_DOCS, ids=rel)
def test_every_repository_path_named_exists(doc):
    """Paths such as ``petl_modules/training/recipe.yaml`` or ``hparams/lora.yaml`` (placeholders
    such as ``hparams/<method>.yaml`` are not paths)."""
    text = doc.read_text(encoding="utf-8")
    pattern = r"(?<![\w/.])((?:petl_modules|hparams|recipes|tests|benchmarks)/[\w/.\-]*\w)(?![\w/.\-<])"
    missing = sorted({p for p in re.findall(pattern, text) if not (REPO / p).exists()})
    assert not missing, f"{rel(doc)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", USER_DOCS, ids=rel)
def test_every_dotted_python_name_exists(doc):
    """``petl_modules.a.b.name``: the longest prefix is a module of the repository and the next
    part is a name its source defines or imports."""
    text = doc.read_text(encoding="utf-8")
    problems = []
    for dotted in set(re.findall(r"\bpetl_modules(?:\.\w+)+", text)):
        parts = dotted.split(".")
        cut = next(c for c in range(len(parts), 0, -1) if _module_file(".".join(parts[:c])))
        if cut < len(parts):
            source = _module_file(".".join(parts[:cut])).read_text(encoding="utf-8")
            if not re.search(rf"\b{re.escape(parts[cut])}\b", source):
                problems.append(dotted)
    assert not problems, f"{rel(doc)} names Python objects that do not exist: {sorted(problems)}"


def test_user_docs_carry_no_notes_about_the_build_machines():
    phrases = ("shared with other jobs", "was lent", "no gpu was", "this project yet")
    for doc in [README, *DOCS, *(REPO / "recipes" / r / "README.md" for r in RECIPES)]:
        text = doc.read_text(encoding="utf-8").lower()
        found = [p for p in phrases if p in text]
        assert not found, f"{rel(doc)}: {found}"
