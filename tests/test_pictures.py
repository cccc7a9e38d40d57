"""The pictures of the guides: every image a guide (or the README) shows exists, and every one outside
docs/images/lab/ is exactly the file that `python -m docs.make_pictures` wrote on its last run
(size and sha256 recorded in docs/images/MANIFEST.json). The lab's screenshots, docs/images/lab/,
are made by the lab's own test, so only their existence is checked here.

A picture that goes stale (redrawn by hand, edited, or left over from an older run) fails here:
rerun `python -m docs.make_pictures` and commit the PNGs with the manifest."""

import os
import re
import json
import shutil

import pytest

from tools.lib.plotting import image_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
IMAGES = os.path.join(DOCS, "images")
LAB = os.path.join(IMAGES, "lab")
MANIFEST = os.path.join(IMAGES, "MANIFEST.json")
COMMAND = "python -m docs.make_pictures"

# ![alt](path), ![alt](<path with spaces>), ![alt](path "title")
IMAGE_RE = re.compile(r'!\[([^\]]*)\]\(\s*(?:<([^>]+)>|([^)\s]+))(?:\s+"[^"]*")?\s*\)')


def image_refs(markdown):
    """[(line, alt text, target)] of the Markdown images outside code fences."""
    refs, fence = [], None
    for n, line in enumerate(markdown.splitlines(), 1):
        stripped = line.lstrip()
        if stripped.startswith("```") or stripped.startswith("~~~"):
            mark = stripped[:3]
            fence = None if fence == mark else (fence or mark)
            continue
        if fence:
            continue
        refs += [(n, m.group(1).strip(), m.group(2) or m.group(3)) for m in IMAGE_RE.finditer(line)]
    return refs


def markdown_sources():
    files = [os.path.join(DOCS, f) for f in sorted(os.listdir(DOCS)) if f.endswith(".md")]
    readme = os.path.join(REPO, "README.md")
    return files + ([readme] if os.path.exists(readme) else [])


def local_images():
    """[(markdown file, line, alt, absolute image path)] of every local image the docs show."""
    out = []
    for path in markdown_sources():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for line, alt, target in image_refs(text):
            if re.match(r"^[a-z]+://", target):
                continue
            out.append((os.path.relpath(path, REPO), line, alt, os.path.normpath(os.path.join(os.path.dirname(path), target))))
    return out


def in_lab(path):
    return os.path.commonpath([os.path.abspath(path), LAB]) == LAB


def manifest_problems(manifest, images_dir, names):
    """Sentences, one per picture in `names` that is missing from the manifest or whose size or
    sha256 differ from what the manifest recorded."""
    from docs.make_pictures import sha256_file
    problems = []
    for name in names:
        entry = manifest["images"].get(name)
        path = os.path.join(images_dir, name)
        if entry is None:
            problems.append(f"{name} is not in the manifest: it was not made by {COMMAND}")
        elif not os.path.exists(path):
            problems.append(f"{name} is in the manifest but missing")
        elif os.path.getsize(path) != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{name} differs from the picture {COMMAND} wrote (size or sha256)")
    return problems


def load_manifest():
    with open(MANIFEST, encoding="utf-8") as f:
        return json.load(f)


# -----------------------------------------------------------------------------
# the checks on the committed docs

def test_image_refs_are_found_outside_code_fences_only():
    md = ('![a loss curve that falls](images/a.png) and ![b](<images/b c.png>)\n'
          '```python\nx = "![not an image](images/c.png)"\n```\n'
          '![remote](https://example.com/d.png "title")\n')
    assert [(n, t) for n, _, t in image_refs(md)] == [(1, "images/a.png"), (1, "images/b c.png"), (5, "https://example.com/d.png")]


def test_every_picture_the_docs_show_exists():
    refs = local_images()
    assert refs, "the docs show no pictures"
    missing = [f"{md}:{line}: {os.path.relpath(p, REPO)}" for md, line, _, p in refs if not os.path.isfile(p)]
    assert not missing, "pictures referenced but missing:\n" + "\n".join(missing)


def test_every_picture_has_alt_text_that_says_what_to_see():
    short = [f"{md}:{line}: '{alt}'" for md, line, alt, _ in local_images() if len(alt.split()) < 6]
    assert not short, "alt text must describe the picture in a sentence (6+ words):\n" + "\n".join(short)


def test_pictures_outside_the_lab_are_the_ones_the_command_wrote_last():
    manifest = load_manifest()
    outside = [p for _, _, _, p in local_images() if not in_lab(p)]
    wrong_folder = [os.path.relpath(p, REPO) for p in outside if os.path.dirname(p) != IMAGES]
    assert not wrong_folder, f"pictures must live in docs/images/ (made by {COMMAND}): {wrong_folder}"
    problems = manifest_problems(manifest, IMAGES, sorted({os.path.basename(p) for p in outside}))
    assert not problems, "\n".join(problems) + f"\nrerun {COMMAND} and commit docs/images/"


def test_manifest_was_written_by_the_command_and_lists_only_files_that_are_shown():
    manifest = load_manifest()
    assert manifest["command"].split(" --")[0] == COMMAND
    assert manifest["date"] and manifest["run"]["steps"]
    on_disk = sorted(f for f in os.listdir(IMAGES) if f.endswith(".png"))
    assert sorted(manifest["images"]) == on_disk, "docs/images/ holds PNGs the last run did not write, or lacks some"
    shown = {os.path.basename(p) for _, _, _, p in local_images() if not in_lab(p)}
    unshown = sorted(set(manifest["images"]) - shown)
    assert not unshown, f"pictures made but shown by no guide: {unshown}"
    for name, entry in manifest["images"].items():
        assert entry["bytes"] < 150 * 1024, f"{name} is {entry['bytes']} bytes: keep pictures under 150 KB"


def test_the_command_is_documented_in_the_guide_index():
    with open(os.path.join(DOCS, "README.md"), encoding="utf-8") as f:
        assert COMMAND in f.read()


def test_a_changed_picture_is_caught(tmp_path):
    manifest = load_manifest()
    name = sorted(manifest["images"])[0]
    shutil.copy(os.path.join(IMAGES, name), tmp_path / name)
    assert manifest_problems(manifest, tmp_path, [name]) == []
    with open(tmp_path / name, "ab") as f:
        f.write(b"\0")
    assert manifest_problems(manifest, tmp_path, [name, "not_made.png"]) == [
        f"{name} differs from the picture {COMMAND} wrote (size or sha256)",
        f"not_made.png is not in the manifest: it was not made by {COMMAND}"]


# -----------------------------------------------------------------------------
# the command itself, on the tests' tiny run

@pytest.mark.slow
def test_make_pictures_draws_every_picture_from_a_run_and_records_them(tiny_run, tmp_path, monkeypatch):
    from docs import make_pictures
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tiny_run))  # main points it at --base-dir; restored after
    out = tmp_path / "images"
    assert make_pictures.main(["--base-dir", str(tiny_run), "--output", str(out)]) == 0
    with open(out / "MANIFEST.json", encoding="utf-8") as f:
        manifest = json.load(f)
    assert manifest["command"] == f"{COMMAND} --base-dir {tiny_run} --output {out}"
    assert manifest["run"]["steps"] == 12 and manifest["run"]["vocab_size"] == 512
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert pngs == sorted(manifest["images"]) and len(pngs) >= 8
    for name in pngs:
        width, height = image_size(out / name)
        assert width >= 600 and height >= 200, f"{name} is {width}x{height}"
    assert manifest_problems(manifest, out, pngs) == []
