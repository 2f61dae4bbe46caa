"""Make each starter lab from its solution, so the two can never drift.

A solution notebook marks the learner's part:

    def percentile(samples, p):
        ### BEGIN SOLUTION
        ordered = sorted(samples)
        ...
        ### END SOLUTION

    predicted = littles_law(4, 4, 20)  ### SOLUTION

In the lab, a marked block inside a function becomes `raise NotImplementedError("...")`,
a marked top-level block (a change to the live stack) becomes a `# YOUR CODE HERE` comment, and a
marked line keeps its left-hand side with `None` as the answer. Outputs are
never written.

    python -m stack.lab.make_labs            # write labs/ from solutions/
    python -m stack.lab.make_labs --check    # fail if labs/ differ (CI runs this)
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END, LINE = "### BEGIN SOLUTION", "### END SOLUTION", "### SOLUTION"
STUB = 'raise NotImplementedError("your code here")'


def starter_source(source: str) -> str:
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# YOUR CODE HERE")
            if indent:      # a function body needs a statement; a top-level block (a stack change) does not
                out.append(f"{indent}{STUB}")
        elif stripped == END:
            if not inside:
                raise ValueError(f"{END} without {BEGIN}")
            inside = False
        elif inside:
            continue
        elif line.rstrip().endswith(LINE):
            match = re.match(r"^(\s*[\w\[\]\.\"', ]+?)\s*=", line)
            if not match:
                raise ValueError(f"{LINE} needs an assignment line, got: {line!r}")
            out.append(f"{match.group(1)} = None  # your answer here")
        else:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN} without {END}")
    return "\n".join(out)


def has_markers(source: str) -> bool:
    return BEGIN in source or LINE in source


def starter_notebook(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    lab = nbformat.from_dict(solution)
    # Cells tagged solution_only (e.g. "assert every check passed") stay out of the lab.
    lab.cells = [c for c in lab.cells if "solution_only" not in c.metadata.get("tags", [])]
    marked = 0
    for cell in lab.cells:
        if cell.cell_type == "code":
            if has_markers(cell.source):
                marked += 1
                cell.source = starter_source(cell.source)
            cell.outputs, cell.execution_count = [], None
    if not marked:
        raise ValueError("no ### BEGIN SOLUTION / ### SOLUTION marker: nothing for the learner to do")
    lab.metadata.pop("widgets", None)
    return lab


def render(solution_path: Path) -> str:
    return nbformat.writes(starter_notebook(nbformat.read(solution_path, as_version=4))) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify only; exit 1 if a lab is out of date")
    args = parser.parse_args(argv)
    stale = []
    for solution in sorted((ROOT / "solutions").glob("*.ipynb")):
        lab = ROOT / "labs" / solution.name
        text = render(solution)
        if lab.exists() and lab.read_text() == text:
            continue
        stale.append(lab)
        if not args.check:
            lab.write_text(text)
    if args.check and stale:
        print("out of date (run python -m stack.lab.make_labs): " + ", ".join(p.name for p in stale), file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
